"""`python -m pipeline` / `alignlab`: one subcommand per tool, flags generated from the config dataclasses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core import registry
from pipeline.core.catalog import CATALOG
from pipeline.core.configs import (
    PRESETS,
    NegativesConfig,
    RunSpec,
    ValidationConfig,
    dump_spec,
    field_table,
    from_dict,
    load_spec,
    preset,
    set_path,
    to_dict,
)
from pipeline.core.documents import DocumentError, parse_yaml
from pipeline.core.errors import AlignlabError, ConfigError
from pipeline.core.registry import plan

# ----------------------------------------------------------------------------------------------- spec flags


def _accepted_types(schema: dict) -> set[str]:
    """The JSON types a field's schema accepts (its own, its enum's, its alternatives')."""
    types = set()
    for option in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
        if "type" in option:
            types |= set(option["type"] if isinstance(option["type"], list) else [option["type"]])
        if "enum" in option:
            types |= {"string" if isinstance(v, str) else type(v).__name__ for v in option["enum"]}
        if "const" in option:
            types.add("string" if isinstance(option["const"], str) else type(option["const"]).__name__)
    return types


def _value_parser(dotted: str, schema: dict):
    """How a `--section.field VALUE` flag is read: a text field takes the value literally (`%x`, `*x`, `{`, `a #b`
    are text); any other field reads it as strict YAML (1e-4 -> float, true -> bool, [a, b] -> list), and a value
    that does not parse is refused naming the flag."""
    if _accepted_types(schema) <= {"string", "null"}:
        return str

    def parse(text: str) -> object:
        try:
            return parse_yaml(text)
        except DocumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None  # argparse names the flag

    parse.__name__ = f"--{dotted} value"
    return parse


def add_spec_arguments(parser: argparse.ArgumentParser, home: bool = True) -> None:
    """--config / --preset plus one `--section.field VALUE` flag per RunSpec field (from its JSON Schema).

    `home=False` for commands that queue work: where a worker reads and writes is its own ALIGNLAB_HOME."""
    parser.add_argument("--config", type=Path, help="RunSpec file (YAML or JSON), e.g. from `alignlab config`.")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="Start from a preset instead of a file.")
    if home:
        parser.add_argument("--home", type=Path, help="ALIGNLAB_HOME for artifacts (default ~/.alignlab).")
    group = parser.add_argument_group("run settings (override the file or preset)")
    for dotted, schema in field_table():
        if dotted in ("preset", "spec_version"):  # --preset picks the starting preset; the version is not a setting
            continue
        choices = f" Choices: {', '.join(map(str, schema['enum']))}." if "enum" in schema else ""
        group.add_argument(
            f"--{dotted}",
            dest=f"set:{dotted}",
            type=_value_parser(dotted, schema),
            metavar="V",
            help=(schema.get("description") or "") + choices,
        )


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    if args.config and args.preset:
        raise ConfigError("give --config or --preset, not both")
    spec = load_spec(args.config) if args.config else preset(args.preset or "tiny-cpu")
    data = to_dict(spec)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("set:") and v is not None}
    for dotted, value in overrides.items():
        set_path(data, dotted, value)
    return from_dict(RunSpec, data) if overrides else spec


def print_event(event: dict) -> None:
    kind = event["kind"]
    label = event.get("node") or (event["stage"] + (f"[{event['role']}]" if event.get("role") else ""))
    if kind == "stage_started":
        print(f"▶ {label} ({event['key']})", flush=True)
    elif kind == "stage_finished":
        how = "reused" if event["reused"] else "done"
        print(f"✔ {label} {how} in {event['seconds']:.1f}s", flush=True)
    elif kind == "log":
        print(f"  {label}: {event['message']}", flush=True)
    elif kind == "metric" and event["step"] % 10 == 0:
        values = event["values"]
        print(f"  {label} step {event['step']}: loss {values.get('loss'):.4f}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.dag import run_dag

    spec = spec_from_args(args)
    dag = run_dag(spec, args.home, print_event)
    report_dir = dag.report_dir
    print(f"run summary: {dag.summary_path}")
    if report_dir:
        report = json.loads((Path(report_dir) / "report.json").read_text())
        print(f"report: {report_dir}/report.md")
        print(f"answer: {report['answer']['text']}")
        print(f"pipeline health: {'GO' if report['go'] else 'NO-GO'}; parity: {report['parity']['verdict']}")
        for item in report["checklist"]:
            print(f"  [{'x' if item['passed'] else ' '}] {item['item']}: {item['reason']}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.dag import artifact_keys, default_store, run_node

    spec = spec_from_args(args)
    store = default_store(args.home)
    keys = artifact_keys(spec)
    role = getattr(args, "role", None)
    for node in plan():
        if node.stage != args.stage or (role and node.role != role):
            continue
        result = run_node(spec, store, node, keys, print_event)
        print(json.dumps({"node": node.name, "out_dir": result.out_dir, "metrics": result.metrics}, default=str))
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from pipeline.tiny import build_tiny

    out = build_tiny(args.out, seed=args.seed, pretrain_steps=args.pretrain_steps)
    print(json.dumps(json.loads((out / "alignlab_tiny.json").read_text()) | {"path": str(out)}, indent=2))
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from pipeline.seed_group import render, run_group

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if len(seeds) < 2:
        raise ConfigError("--seeds: name at least two training seeds, e.g. 0,1,2")
    report = run_group(spec_from_args(args), seeds, args.home, print_event)
    print(render(report), end="")
    print(f"seed group report: {report['path']}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from pipeline.packaged import PROVENANCE, ensure_packaged

    def step(done: int, total: int, message: str) -> None:
        print(f"[{done}/{total}] {message}", flush=True)

    target = ensure_packaged(CATALOG[args.name], on_step=step)
    print(json.dumps(json.loads((target / PROVENANCE).read_text()) | {"path": str(target)}, indent=2))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from pipeline.packaged import is_ready, model_dir

    for entry in CATALOG.values():
        state = f"ready at {model_dir(entry)}" if is_ready(entry) else "not fetched yet"
        print(f"{entry.name}  {entry.package}=={entry.version}  {entry.license}  {state}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline import validation
    from pipeline.sources import read_records

    config = ValidationConfig(max_error_rate=args.max_error_rate, max_text_chars=args.max_text_chars)
    weights = NegativesConfig().normalized_weights() if args.check_type_mix else None
    if args.kind in ("sft", "instructions"):
        report = validation.validate_file(args.kind, args.file, config, read=read_records)
    elif args.kind == "negatives":
        _, report = validation.load_and_validate_negatives(
            args.file, config, weights=weights, strict=False, read=read_records
        )
    else:
        _, report = validation.load_and_validate_pairs(
            args.file, args.heldout, config, weights=weights, strict=False, read=read_records
        )
    print(report.to_json() if args.json else report.summary())
    return 0 if report.passed else 1


def cmd_config(args: argparse.Namespace) -> int:
    spec = preset(args.preset)
    if args.out:
        print(dump_spec(spec, args.out))
    else:
        import yaml

        from pipeline.core.configs import to_dict

        print(yaml.safe_dump(to_dict(spec), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description="alignlab: SFT and DPO experiment manager")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="Build the offline tiny model and tokenizer.")
    tiny.add_argument("--out", required=True, type=Path, help="Directory to write the model to.")
    tiny.add_argument("--seed", type=int, default=0, help="Seed: the same seed builds the same model.")
    tiny.add_argument("--pretrain-steps", type=int, default=200, help="Pre-training steps on the demo corpus.")
    tiny.set_defaults(func=cmd_tiny)

    models = sub.add_parser("models", help="Models alignlab installs offline from a package registry.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    fetch = models_sub.add_parser("fetch", help="Fetch and convert a catalog model into ALIGNLAB_HOME/models.")
    fetch.add_argument("name", choices=sorted(CATALOG), help="Catalog name, as a config's name_or_path names it.")
    fetch.set_defaults(func=cmd_models_fetch)
    models_sub.add_parser("list", help="The catalog and what is fetched.").set_defaults(func=cmd_models_list)

    validate = sub.add_parser("validate", help="Validate a data file before paying for a GPU.")
    validate.add_argument("--kind", required=True, choices=("instructions", "sft", "negatives", "pairs"))
    validate.add_argument("file", type=Path, help="JSONL file or datasets directory.")
    validate.add_argument("--heldout", type=Path, help="Held-out pairs file (pairs only): checks prompt leakage.")
    validate.add_argument("--json", action="store_true", help="Print the full report as JSON.")
    validate.add_argument("--max-error-rate", type=float, default=ValidationConfig().max_error_rate)
    validate.add_argument("--max-text-chars", type=int, default=ValidationConfig().max_text_chars)
    validate.add_argument(
        "--check-type-mix", action="store_true", help="Warn when the negative-type mix is far from equal weights."
    )
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="Run the whole DAG in this process, one model at a time.")
    add_spec_arguments(run)
    run.set_defaults(func=cmd_run)

    seeds = sub.add_parser(
        "seeds", help="Run the DAG for several training seeds: seed-aware intervals and the A/A control."
    )
    add_spec_arguments(seeds)
    seeds.add_argument("--seeds", default="0,1,2", help="Comma-separated training seeds (at least two).")
    seeds.set_defaults(func=cmd_seeds)

    for declared in registry.STAGES.values():
        stage_parser = sub.add_parser(
            declared.command, help=f"Run only {declared.name}: {declared.help} (its inputs must be complete)."
        )
        add_spec_arguments(stage_parser)
        if declared.role_argument:
            stage_parser.add_argument(
                f"--{declared.role_argument}", dest="role", choices=declared.roles, help="Only this variant."
            )
        stage_parser.set_defaults(func=cmd_stage, stage=declared.name)

    config = sub.add_parser("config", help="Print or save a preset's full RunSpec (YAML or JSON).")
    config.add_argument("--preset", default="tiny-cpu", choices=sorted(PRESETS))
    config.add_argument("--out", type=Path, help="Write here (.yaml/.yml or .json) instead of printing.")
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AlignlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
