"""compare: the four methods side by side with paired statistics, the parity check and a go/no-go checklist.

Differences between methods are paired over the same held-out items (pairs for preference metrics, prompts for
generation metrics), with 95% bootstrap CIs and a sign test. The parity check diffs the effective configs of
SFT→DPO and DPO-only: anything but the init / reference model differing makes the comparison "not fair".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.configs import METHODS, RunSpec, to_dict
from pipeline.stages import RESULT_FILE, Progress, ProgressFn, StageResult, read_json, read_jsonl, write_json
from pipeline.stages.evaluate import PAIRS_OUT, SAMPLES_OUT
from pipeline.stages.train_dpo import EFFECTIVE_CONFIG
from pipeline.stats import mean_ci, paired_difference

STAGE = "compare"
PARITY_EXEMPT = ("init_model", "reference_model")
MIN_HELDOUT_PAIRS = 30
COMPARISONS = (("sft_dpo", "dpo_only"), ("sft_dpo", "base"), ("dpo_only", "base"), ("sft", "base"), ("sft_dpo", "sft"))
# metric -> (rows it lives on, how to read one item, higher is better?)
PAIR_METRICS = {"preference_accuracy": ("correct", True), "margin": ("margin", True)}
SAMPLE_METRICS = {
    "reference_nll": (lambda s: s["reference_nll"], False),
    "eos_rate": (lambda s: float(s["stats"]["eos_reached"]), True),
    "distinct_2": (lambda s: s["stats"]["distinct_2"], True),
    "repetition": (lambda s: s["stats"]["repetition"], False),
    "template_leak_rate": (lambda s: float(s["stats"]["template_leak"]), False),
    "refusal_rate": (lambda s: float(s["stats"]["refusal"]), False),
    "new_tokens": (lambda s: float(s["stats"]["new_tokens"]), None),
}


def config_slice(spec: RunSpec) -> dict[str, Any]:
    return {"compare": to_dict(spec.compare)}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def parity_check(sft_dpo: dict[str, Any] | None, dpo_only: dict[str, Any] | None) -> dict[str, Any]:
    """Diff the two DPO runs' effective configs; fair only when nothing but init/reference differs."""
    if sft_dpo is None or dpo_only is None:
        return {"fair": False, "verdict": "not checked: one of the DPO runs is missing", "differences": [], "all": []}
    a, b = flatten(sft_dpo), flatten(dpo_only)
    rows = []
    for key in sorted(set(a) | set(b)):
        exempt = key.split(".")[0] in PARITY_EXEMPT
        rows.append(
            {
                "field": key,
                "sft_dpo": a.get(key),
                "dpo_only": b.get(key),
                "same": a.get(key) == b.get(key),
                "exempt": exempt,
            }
        )
    differences = [r for r in rows if not r["same"] and not r["exempt"]]
    fair = not differences
    verdict = (
        "fair: SFT→DPO and DPO-only differ only in the init / reference model"
        if fair
        else "NOT a fair comparison: " + ", ".join(r["field"] for r in differences) + " differ"
    )
    return {"fair": fair, "verdict": verdict, "differences": differences, "all": rows}


def _load(inputs: dict[str, Path], name: str) -> dict[str, Any] | None:
    if name not in inputs or not (inputs[name] / RESULT_FILE).exists():
        return None
    return read_json(inputs[name] / RESULT_FILE)


def checklist(
    inputs: dict[str, Path], evaluations: dict[str, dict[str, Any]], parity: dict[str, Any], n_pairs: int
) -> list[dict[str, Any]]:
    results = {name: _load(inputs, name) for name in inputs}

    def item(name: str, passed: bool, reason: str) -> dict[str, Any]:
        return {"item": name, "passed": bool(passed), "reason": reason}

    missing = [n for n, r in results.items() if r is None]
    lines = [
        item(
            "every stage complete",
            not missing,
            f"missing results: {missing}" if missing else f"{len(results)} stage results present",
        )
    ]
    sft = results.get("train_sft")
    masking = bool(sft and sft["checks"].get("masking_verified", {}).get("passed"))
    lines.append(
        item(
            "masking verified",
            masking,
            sft["checks"]["masking_verified"]["detail"] if sft else "train_sft result missing",
        )
    )
    failed_reports = [
        f"{r['stage']}:{rep['kind']}"
        for r in results.values()
        if r
        for rep in r.get("reports", [])
        if not rep["passed"]
    ]
    lines.append(
        item(
            "validation passed at every hand-off",
            not failed_reports,
            f"failed: {failed_reports}" if failed_reports else "all reports passed",
        )
    )
    missing_methods = [m for m in METHODS if m not in evaluations]
    lines.append(
        item(
            "all four models evaluated",
            not missing_methods,
            f"missing: {missing_methods}" if missing_methods else ", ".join(METHODS),
        )
    )
    for init, name in (("sft", "dpo_sft"), ("base", "dpo_base")):
        result = results.get(name)
        check = result["checks"].get("reference_is_init") if result else None
        lines.append(
            item(
                f"DPO ({init} init) reference equals its init at step 1",
                bool(check and check["passed"]),
                check["detail"] if check else "train_dpo result missing",
            )
        )
    lines.append(item("parity: same DPO settings for both variants", parity["fair"], parity["verdict"]))
    leaks = []
    for method, result in evaluations.items():
        info = result.get("load_info") or {}
        before, after = info.get("memory_before_bytes"), info.get("memory_after_release_bytes")
        model_bytes = info.get("parameter_count", 0) * (1 if info.get("quantization") == "8bit" else 2)
        if before is None or after is None or after - before > 0.5 * max(model_bytes, 1):
            leaks.append(f"{method}: {((after or 0) - (before or 0)) / 2**20:.1f} MiB kept")
    lines.append(
        item(
            "memory released between models",
            not leaks,
            "; ".join(leaks) if leaks else "each model's memory returned after its evaluation",
        )
    )
    lines.append(
        item(f"at least {MIN_HELDOUT_PAIRS} held-out pairs", n_pairs >= MIN_HELDOUT_PAIRS, f"{n_pairs} held-out pairs")
    )
    return lines


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    progress = Progress(STAGE, on_progress)
    config = spec.compare
    ci_args = {"confidence": config.confidence, "n_resamples": config.n_bootstrap, "seed": config.seed}
    evaluations, pair_rows, sample_rows = {}, {}, {}
    for method in METHODS:
        name = f"eval_{method}"
        if name in inputs and (inputs[name] / PAIRS_OUT).exists():
            evaluations[method] = _load(inputs, name) or {}
            pair_rows[method] = {r["pair_id"]: r for r in read_jsonl(inputs[name] / PAIRS_OUT)}
            sample_rows[method] = {s["prompt_id"]: s for s in read_jsonl(inputs[name] / SAMPLES_OUT)}

    table: dict[str, dict[str, Any]] = {}
    for method in evaluations:
        row = {
            m: mean_ci([r[field] for r in pair_rows[method].values()], **ci_args)
            for m, (field, _) in PAIR_METRICS.items()
        }
        row.update(
            {
                m: mean_ci([read(s) for s in sample_rows[method].values()], **ci_args)
                for m, (read, _) in SAMPLE_METRICS.items()
            }
        )
        table[method] = row
    differences = []
    for a, b in COMPARISONS:
        if a not in evaluations or b not in evaluations:
            continue
        for metric, (field, higher) in PAIR_METRICS.items():
            diff = paired_difference(
                {k: r[field] for k, r in pair_rows[a].items()},
                {k: r[field] for k, r in pair_rows[b].items()},
                higher_is_better=higher,
                **ci_args,
            )
            differences.append({"a": a, "b": b, "metric": metric, "higher_is_better": higher, **diff})
        for metric, (read, higher) in SAMPLE_METRICS.items():
            diff = paired_difference(
                {k: read(s) for k, s in sample_rows[a].items()},
                {k: read(s) for k, s in sample_rows[b].items()},
                higher_is_better=higher,
                **ci_args,
            )
            differences.append({"a": a, "b": b, "metric": metric, "higher_is_better": higher, **diff})
    by_type: dict[str, dict[str, Any]] = defaultdict(dict)
    for method, rows in pair_rows.items():
        grouped: dict[str, list[float]] = defaultdict(list)
        for r in rows.values():
            grouped[r["negative_type"] or "untyped"].append(r["correct"])
        for negative_type, values in sorted(grouped.items()):
            by_type[negative_type][method] = mean_ci(values, **ci_args)

    effective = {
        init: read_json(inputs[name] / EFFECTIVE_CONFIG)
        for init, name in (("sft_dpo", "dpo_sft"), ("dpo_only", "dpo_base"))
        if name in inputs and (inputs[name] / EFFECTIVE_CONFIG).exists()
    }
    parity = parity_check(effective.get("sft_dpo"), effective.get("dpo_only"))
    n_pairs = max((len(rows) for rows in pair_rows.values()), default=0)
    checks = checklist(inputs, evaluations, parity, n_pairs)
    go = all(c["passed"] for c in checks)
    headline = next(
        (d for d in differences if (d["a"], d["b"], d["metric"]) == ("sft_dpo", "dpo_only", "preference_accuracy")),
        None,
    )
    report = {
        "run": spec.name,
        "methods": list(evaluations),
        "table": table,
        "differences": differences,
        "by_negative_type": dict(by_type),
        "parity": parity,
        "checklist": checks,
        "go": go,
        "headline": headline,
    }
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    progress.log(f"{'GO' if go else 'NO-GO'}; parity: {parity['verdict']}")
    return StageResult(
        stage=STAGE,
        outputs={"report": "report.json", "markdown": "report.md"},
        metrics={"go": go, "fair": parity["fair"], "headline": headline, "heldout_pairs": n_pairs},
        checks={c["item"]: {"passed": c["passed"], "detail": c["reason"]} for c in checks},
        previews={"report": [report]},
        seconds=progress.elapsed(),
    )


def _fmt(stat: dict[str, Any], digits: int = 3) -> str:
    if stat.get("mean") is None:
        return "–"
    ci = "" if stat.get("ci_low") is None else f" [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"
    return f"{stat['mean']:.{digits}f}{ci}"


def render_markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    lines = [f"# alignlab comparison: {report['run']}", ""]
    head = report["headline"]
    if head:
        lines += [
            f"**Did SFT before DPO help?** Preference accuracy SFT→DPO − DPO-only = {_fmt(head)} "
            f"over {head['n']} held-out pairs (95% bootstrap CI), sign test p = {head['sign_test_p']}: "
            f"**{head['verdict']}**.",
            "",
        ]
    lines += [f"**Verdict: {'GO' if report['go'] else 'NO-GO'}** · parity: {report['parity']['verdict']}", ""]
    metrics = list(PAIR_METRICS) + list(SAMPLE_METRICS)
    lines += [
        "## Methods (mean [95% CI])",
        "",
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_fmt(report["table"][m][metric]) for m in methods) + " |")
    lines += ["", f"n = {report['table'][methods[0]]['preference_accuracy']['n'] if methods else 0} pairs", ""]
    lines += [
        "## Paired differences (a − b)",
        "",
        "| a | b | metric | mean [95% CI] | wins/losses/ties | sign p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in report["differences"]:
        p = "–" if d["sign_test_p"] is None else f"{d['sign_test_p']:.3g}"
        lines.append(
            f"| {d['a']} | {d['b']} | {d['metric']} | {_fmt(d)} | {d['wins']}/{d['losses']}/{d['ties']} "
            f"| {p} | {d['verdict']} |"
        )
    lines += [
        "",
        "## Preference accuracy by negative type",
        "",
        "| type | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for negative_type, per_method in report["by_negative_type"].items():
        lines.append(f"| {negative_type} | " + " | ".join(_fmt(per_method.get(m, {})) for m in methods) + " |")
    lines += ["", "## Parity check", "", report["parity"]["verdict"], ""]
    for d in report["parity"]["differences"]:
        lines.append(f"- `{d['field']}`: SFT→DPO `{d['sft_dpo']}` vs DPO-only `{d['dpo_only']}`")
    lines += ["", "## Go / no-go", ""]
    for c in report["checklist"]:
        lines.append(f"- [{'x' if c['passed'] else ' '}] {c['item']}: {c['reason']}")
    return "\n".join(lines) + "\n"
