"""`python -m pipeline` / `alignlab`: one subcommand per tool, flags generated from the config dataclasses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.configs import PRESETS, NegativesConfig, ValidationConfig, dump_spec, preset
from pipeline.errors import AlignlabError


def cmd_tiny(args: argparse.Namespace) -> int:
    from pipeline.tiny import build_tiny

    out = build_tiny(args.out, seed=args.seed, pretrain_steps=args.pretrain_steps)
    print(json.dumps(json.loads((out / "alignlab_tiny.json").read_text()) | {"path": str(out)}, indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline import validation

    config = ValidationConfig(max_error_rate=args.max_error_rate, max_text_chars=args.max_text_chars)
    weights = NegativesConfig().normalized_weights() if args.check_type_mix else None
    if args.kind == "sft":
        _, report = validation.load_and_validate_sft(args.file, config, strict=False)
    elif args.kind == "negatives":
        _, report = validation.load_and_validate_negatives(args.file, config, weights=weights, strict=False)
    else:
        _, report = validation.load_and_validate_pairs(args.file, args.heldout, config, weights=weights, strict=False)
    print(report.to_json() if args.json else report.summary())
    return 0 if report.passed else 1


def cmd_config(args: argparse.Namespace) -> int:
    spec = preset(args.preset)
    if args.out:
        print(dump_spec(spec, args.out))
    else:
        import yaml

        from pipeline.configs import to_dict

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

    validate = sub.add_parser("validate", help="Validate a data file before paying for a GPU.")
    validate.add_argument("--kind", required=True, choices=("sft", "negatives", "pairs"))
    validate.add_argument("file", type=Path, help="JSONL file or datasets directory.")
    validate.add_argument("--heldout", type=Path, help="Held-out pairs file (pairs only): checks prompt leakage.")
    validate.add_argument("--json", action="store_true", help="Print the full report as JSON.")
    validate.add_argument("--max-error-rate", type=float, default=ValidationConfig().max_error_rate)
    validate.add_argument("--max-text-chars", type=int, default=ValidationConfig().max_text_chars)
    validate.add_argument(
        "--check-type-mix", action="store_true", help="Warn when the negative-type mix is far from equal weights."
    )
    validate.set_defaults(func=cmd_validate)

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
