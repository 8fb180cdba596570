"""compare: the four methods side by side with paired statistics, the parity check and a go/no-go checklist.

Differences between methods are paired over the same held-out prompts (a prompt's pairs averaged first: it counts
once), tested by one pre-declared test, the sign-flip permutation test on the per-prompt mean differences, whose
interval is the same test inverted (it holds the estimate, and excludes 0 exactly when the test rejects); the exact
sign test is a robustness line beside it. The primary metric (named in the config before the run) answers the
question alone; the question's other metrics (SFT→DPO vs DPO-only) are its secondary family, corrected together
(Holm or Benjamini–Hochberg); the other comparisons (against base, against SFT) are a separate, descriptive family.
The answer is stated apart from the pipeline's go/no-go, with the minimum difference this n could detect. The
parity check diffs the effective configs
of SFT→DPO and DPO-only: anything but the init / reference model differing makes the comparison "not fair".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.core.configs import METHODS, PRIMARY_PAIR, RunSpec, flatten
from pipeline.core.controls import control_status
from pipeline.core.metrics import METRICS, Metric, corpus_metrics, pair_metrics, sample_metrics
from pipeline.core.registry import stage_of_module
from pipeline.core.stats import ONE_SEED, correct_family, mean_ci, paired_difference
from pipeline.stages import RESULT_FILE, Progress, ProgressFn, StageResult, read_json, read_jsonl, write_json
from pipeline.stages.evaluate import PAIRS_OUT, SAMPLES_OUT
from pipeline.stages.train_dpo import EFFECTIVE_CONFIG

STAGE = stage_of_module(__name__)
PARITY_EXEMPT = ("init_model", "reference_model")
MIN_HELDOUT_PAIRS = 30
COMPARISONS = (("sft_dpo", "dpo_only"), ("sft_dpo", "base"), ("dpo_only", "base"), ("sft", "base"), ("sft_dpo", "sft"))
# the DPO model's reference model (its init): the implicit reward is log π(y|x) − log π_ref(y|x)
DPO_REFERENCE = {"sft_dpo": "sft", "dpo_only": "base"}


def compared() -> list[Metric]:
    """The registry's compared metrics: per pair (clustered by prompt) first, then per sample (per prompt)."""
    return [m for m in pair_metrics() + sample_metrics() if m.compared]


def metric_rows(metric: Metric, pair_rows: dict, sample_rows: dict, method: str) -> dict[str, dict[str, Any]]:
    return (pair_rows if metric.per == "pair" else sample_rows)[method]


def _value(metric: Metric, row: dict[str, Any]) -> float | None:
    return metric.compute(row) if metric.per == "pair" else row["stats"].get(metric.name)


def metric_values(metric: Metric, rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    values = {key: _value(metric, row) for key, row in rows.items()}
    return {key: v for key, v in values.items() if v is not None}


def add_implicit_rewards(pair_rows: dict[str, dict[str, dict[str, Any]]]) -> None:
    """For each DPO model, whether its implicit reward (log-prob gain over its reference model) prefers chosen."""
    for method, reference in DPO_REFERENCE.items():
        if method not in pair_rows or reference not in pair_rows:
            continue
        for pair_id, row in pair_rows[method].items():
            ref = pair_rows[reference].get(pair_id)
            if ref is not None:
                chosen_gain = row["chosen_logp"] - ref["chosen_logp"]
                rejected_gain = row["rejected_logp"] - ref["rejected_logp"]
                row["implicit_correct"] = float(chosen_gain > rejected_gain)


def corpus_metrics_values(samples: list[dict[str, Any]], ci_args: dict[str, Any]) -> dict[str, Any]:
    """Every corpus metric of one method's generations, without an interval: resampling prompts with replacement
    repeats outputs, which a statistic of the whole corpus counts as repetition (the share of distinct draws of 26
    prompts is 1 − (25/26)^26 ≈ 0.64 even when every output differs), so no bootstrap interval of it can hold its
    own estimate."""
    texts = [" ".join(s["generation"].split()).casefold() for s in samples]
    return {
        metric.name: {
            "mean": metric.compute(texts) if texts else None,
            "ci_low": None,
            "ci_high": None,
            "n": len(texts),
            "confidence": ci_args["confidence"],
            "interval": "none: a statistic of the whole corpus",
        }
        for metric in corpus_metrics()
    }


def prompt_clustered_mean_ci(rows: dict[str, dict[str, Any]], metric: Metric, ci_args: dict[str, Any]) -> dict:
    """A method's mean of a metric with its interval over prompts: a prompt's items (its pairs) averaged first, so
    a prompt counts once and the interval resamples prompts, as the paired differences do."""
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for key, row in rows.items():
        value = _value(metric, row)
        if value is not None:
            by_prompt[row.get("prompt_id", key)].append(value)
    stat = mean_ci([sum(v) / len(v) for v in by_prompt.values()], **ci_args)
    return {**stat, "n": sum(len(v) for v in by_prompt.values()), "n_prompts": len(by_prompt)}


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


TRAINING_NODES = ("train_sft", "dpo_sft", "dpo_base")


def heldout_leak_checks(results: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The decontamination report of each training stage (split_prompts' held-out texts against its inputs)."""
    checks = []
    for node in TRAINING_NODES:
        for rep in (results.get(node) or {}).get("reports", []):
            if rep["kind"] == "decontamination":
                checks.append({"stage": node, "passed": rep["passed"], **rep["stats"]})
    return checks


def _item(name: str, passed: bool, reason: str) -> dict[str, Any]:
    return {"item": name, "passed": bool(passed), "reason": reason}


def _stages_complete(results: dict[str, Any]) -> list[dict[str, Any]]:
    missing = [n for n, r in results.items() if r is None]
    reason = f"missing results: {missing}" if missing else f"{len(results)} stage results present"
    return [_item("every stage complete", not missing, reason)]


def _masking(results: dict[str, Any]) -> list[dict[str, Any]]:
    sft = results.get("train_sft")
    check = sft["checks"].get("masking_verified", {}) if sft else {}
    return [_item("masking verified", bool(check.get("passed")), check.get("detail", "train_sft result missing"))]


def _validation(results: dict[str, Any]) -> list[dict[str, Any]]:
    failed = [
        f"{r['stage']}:{rep['kind']}"
        for r in results.values()
        if r
        for rep in r.get("reports", [])
        if not rep["passed"]
    ]
    reason = f"failed: {failed}" if failed else "all reports passed"
    return [_item("validation passed at every hand-off", not failed, reason)]


def _references(results: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for init, name in (("sft", "dpo_sft"), ("base", "dpo_base")):
        result = results.get(name)
        check = result["checks"].get("reference_is_init") if result else None
        reason = check["detail"] if check else "train_dpo result missing"
        items.append(
            _item(f"DPO ({init} init) reference equals its init at step 1", bool(check and check["passed"]), reason)
        )
    return items


def _heldout_clean(results: dict[str, Any]) -> list[dict[str, Any]]:
    leaks = heldout_leak_checks(results)
    reason = "; ".join(f"{c['stage']}: {c['contaminated']} of {c['heldout_texts']} held-out texts" for c in leaks)
    passed = bool(leaks) and all(c["passed"] for c in leaks)
    return [_item("held-out data never in a training input", passed, reason or "no decontamination check found")]


def _memory_released(evaluations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evaluated model gone after its evaluation: the model object itself released (its weak reference dead),
    and on a GPU, whose allocator counts exactly, less than half its weights still allocated. On a CPU the RSS delta
    is shown but does not decide: it moves by a few MiB with what the process imported meanwhile, as much as a tiny
    model weighs. Results recorded before `model_released` existed fall back to the byte count."""
    kept = []
    for method, result in evaluations.items():
        info = result.get("load_info") or {}
        before, after = info.get("memory_before_bytes"), info.get("memory_after_release_bytes")
        weight_bytes = info.get("parameter_count", 0) * (1 if info.get("quantization") == "8bit" else 2)
        delta = f"{((after or 0) - (before or 0)) / 2**20:.1f} MiB"
        released = info.get("model_released")
        if released is False:
            kept.append(f"{method}: the model object was still referenced after its evaluation ({delta} kept)")
        elif (released is None or info.get("device") == "cuda") and (
            before is None or after is None or after - before > 0.5 * max(weight_bytes, 1)
        ):
            kept.append(f"{method}: {delta} kept")
    reason = "; ".join(kept) if kept else "each model's memory returned after its evaluation"
    return [_item("memory released between models", not kept, reason)]


def checklist(
    inputs: dict[str, Path], evaluations: dict[str, dict[str, Any]], parity: dict[str, Any], n_pairs: int
) -> list[dict[str, Any]]:
    """The pipeline-health go/no-go: each line passed or not, with its reason."""
    results = {name: _load(inputs, name) for name in inputs}
    missing_methods = [m for m in METHODS if m not in evaluations]
    evaluated = f"missing: {missing_methods}" if missing_methods else ", ".join(METHODS)
    return [
        *_stages_complete(results),
        *_masking(results),
        *_validation(results),
        _item("all four models evaluated", not missing_methods, evaluated),
        *_references(results),
        _item("parity: same DPO settings for both variants", parity["fair"], parity["verdict"]),
        *_heldout_clean(results),
        *_memory_released(evaluations),
        _item(
            f"at least {MIN_HELDOUT_PAIRS} held-out pairs", n_pairs >= MIN_HELDOUT_PAIRS, f"{n_pairs} held-out pairs"
        ),
    ]


def _read_evaluations(inputs: dict[str, Path]) -> tuple[dict, dict, dict]:
    """(evaluation result, pair rows by pair id, sample rows by prompt id) of each evaluated method."""
    evaluations, pair_rows, sample_rows = {}, {}, {}
    for method in METHODS:
        name = f"eval_{method}"
        if name in inputs and (inputs[name] / PAIRS_OUT).exists():
            evaluations[method] = _load(inputs, name) or {}
            pair_rows[method] = {r["pair_id"]: r for r in read_jsonl(inputs[name] / PAIRS_OUT)}
            sample_rows[method] = {s["prompt_id"]: s for s in read_jsonl(inputs[name] / SAMPLES_OUT)}
    add_implicit_rewards(pair_rows)
    return evaluations, pair_rows, sample_rows


def _method_table(pair_rows: dict, sample_rows: dict, ci_args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every compared and corpus metric of each method, with its CI."""
    table = {}
    for method in sample_rows:
        row = {
            m.name: prompt_clustered_mean_ci(metric_rows(m, pair_rows, sample_rows, method), m, ci_args)
            for m in compared()
        }
        row.update(corpus_metrics_values(list(sample_rows[method].values()), ci_args))
        table[method] = row
    return table


def _paired(
    pair_rows: dict, sample_rows: dict, a: str, b: str, m: Metric, paired: dict[str, Any]
) -> dict[str, Any] | None:
    """a − b on one metric, paired by item and resampled by prompt; None when either method lacks the metric."""
    if a not in sample_rows or b not in sample_rows:
        return None
    values_a = metric_values(m, metric_rows(m, pair_rows, sample_rows, a))
    values_b = metric_values(m, metric_rows(m, pair_rows, sample_rows, b))
    if not values_a or not values_b:
        return None  # e.g. the implicit reward of a model that has none, correctness without answers
    by_prompt = {"clusters": {k: r["prompt_id"] for k, r in pair_rows[a].items()}} if m.per == "pair" else {}
    return paired_difference(values_a, values_b, higher_is_better=m.higher_is_better, **by_prompt, **paired)


ROLES = ("primary", "secondary", "descriptive")


def _role(a: str, b: str, metric: str, primary_metric: str) -> str:
    """primary: the question on its pre-declared metric; secondary: the question on any other metric (one family);
    descriptive: every other comparison (a family of its own, so it costs the question no power)."""
    if (a, b) != PRIMARY_PAIR:
        return "descriptive"
    return "primary" if metric == primary_metric else "secondary"


def _differences(pair_rows: dict, sample_rows: dict, config: Any, ci_args: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired differences of every compared metric for each comparison; the primary one tested alone, the
    secondary and the descriptive ones each corrected as a family."""
    paired = {**ci_args, "min_discordant": config.min_discordant_prompts}
    differences = []
    for a, b in COMPARISONS:
        for m in compared():
            diff = _paired(pair_rows, sample_rows, a, b, m, paired)
            if diff is None:
                continue
            differences.append(
                {"a": a, "b": b, "metric": m.name, **diff, "role": _role(a, b, m.name, config.primary_metric)}
            )
    for family in ("secondary", "descriptive"):
        members = [d for d in differences if d["role"] == family]
        correct_family(members, config.correction, paired["min_discordant"])
        for d in members:
            d["family_size"] = len(members)
    return differences


def _controls(
    pair_rows: dict, sample_rows: dict, config: Any, ci_args: dict[str, Any], table: dict
) -> list[dict[str, Any]]:
    """Each known-answer control's difference, measured like the others, and whether the planted effect showed."""
    paired = {**ci_args, "min_discordant": config.min_discordant_prompts}
    results = []
    for control in config.controls:
        diff = _paired(pair_rows, sample_rows, control.a, control.b, METRICS[control.metric], paired)
        baseline = (table.get(control.b) or {}).get(control.metric, {}).get("mean")
        results.append(control_status(control, diff, baseline))
    return results


def _by_negative_type(pair_rows: dict, ci_args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_type: dict[str, dict[str, Any]] = defaultdict(dict)
    for method, rows in pair_rows.items():
        grouped: dict[str, list[float]] = defaultdict(list)
        for r in rows.values():
            grouped[r["negative_type"] or "untyped"].append(r["correct"])
        for negative_type, values in sorted(grouped.items()):
            by_type[negative_type][method] = mean_ci(values, **ci_args)
    return dict(by_type)


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    progress = Progress(STAGE, on_progress)
    config = spec.compare
    ci_args = {"confidence": config.confidence, "n_resamples": config.n_bootstrap, "seed": config.seed}
    evaluations, pair_rows, sample_rows = _read_evaluations(inputs)
    table = _method_table(pair_rows, sample_rows, ci_args)
    differences = _differences(pair_rows, sample_rows, config, ci_args)
    families = {role: sum(d["role"] == role for d in differences) for role in ROLES}
    by_type = _by_negative_type(pair_rows, ci_args)

    effective = {
        init: read_json(inputs[name] / EFFECTIVE_CONFIG)
        for init, name in (("sft_dpo", "dpo_sft"), ("dpo_only", "dpo_base"))
        if name in inputs and (inputs[name] / EFFECTIVE_CONFIG).exists()
    }
    parity = parity_check(effective.get("sft_dpo"), effective.get("dpo_only"))
    n_pairs = max((len(rows) for rows in pair_rows.values()), default=0)
    checks = checklist(inputs, evaluations, parity, n_pairs)
    go = all(c["passed"] for c in checks)
    headline = next((d for d in differences if d["role"] == "primary"), None)
    report = {
        "run": spec.name,
        "methods": list(evaluations),
        "table": table,
        "differences": differences,
        "by_negative_type": by_type,
        "parity": parity,
        "checklist": checks,
        "go": go,
        "headline": headline,
        "answer": answer(headline, config.primary_metric),
        "controls": _controls(pair_rows, sample_rows, config, ci_args, table),
        "heldout": {
            "split": (_load(inputs, "split") or {}).get("metrics"),
            "decontamination": heldout_leak_checks({n: _load(inputs, n) for n in TRAINING_NODES}),
        },
        "correction": f"the primary metric tested alone at {1 - config.confidence:.2g}; "
        f"{CORRECTION_NAMES[config.correction]} within the question's {families['secondary']} secondary differences, "
        f"and separately within the {families['descriptive']} descriptive ones (against base, against SFT)",
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


CORRECTION_NAMES = {"holm": "Holm (family-wise error)", "bh": "Benjamini–Hochberg (false discovery rate)"}


def answer(headline: dict[str, Any] | None, metric: str) -> dict[str, Any]:
    """The scientific answer in words, apart from the pipeline's health: better / worse / no detectable difference
    at this n, with the minimum detectable difference."""
    if headline is None:
        return {"metric": metric, "verdict": "not measured", "text": f"SFT→DPO vs DPO-only on {metric}: not measured"}
    detectable = headline.get("min_detectable_difference")
    power = "" if detectable is None else f" (minimum detectable difference ≈ {detectable:.3f} at 80% power)"
    verdict = headline["verdict"]
    if verdict in ("better", "worse", "higher", "lower"):
        said = f"SFT before DPO is {verdict} on {metric}"
    elif verdict.startswith("too few"):
        said = f"no answer on {metric}: {verdict}"
    else:
        said = f"no detectable difference on {metric} at n = {headline['n_prompts']} prompts{power}"
    ci = "" if headline.get("ci_low") is None else f" [{headline['ci_low']:.3f}, {headline['ci_high']:.3f}]"
    p = "–" if headline.get("p") is None else f"{headline['p']:.3g}"
    sign = "–" if headline.get("sign_test_p") is None else f"{headline['sign_test_p']:.3g}"
    return {
        "metric": metric,
        "verdict": verdict,
        "text": f"{said}: SFT→DPO − DPO-only = {headline['mean']:+.3f}{ci} over {headline['n']} items "
        f"({headline['n_prompts']} prompts), {headline.get('test', 'sign-flip permutation test')} p = {p} "
        f"(robustness: exact sign test p = {sign})",
    }


def _fmt(stat: dict[str, Any], digits: int = 3) -> str:
    if stat.get("mean") is None:
        return "–"
    ci = "" if stat.get("ci_low") is None else f" [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"
    return f"{stat['mean']:.{digits}f}{ci}"


def control_lines(controls: list[dict[str, Any]]) -> list[str]:
    """The known-answer controls' section of the report: none when the run planted no effect."""
    if not controls:
        return []
    lines = ["## Controls (experiments with a known answer)", ""]
    lines += [f"- {'PASS' if c['passed'] else 'FAIL'}: {c['text']}" for c in controls]
    return [*lines, ""]


def heldout_lines(heldout: dict[str, Any]) -> list[str]:
    split = heldout.get("split") or {}
    lines = [
        f"{split.get('train', '?')} training and {split.get('heldout', '?')} held-out prompts, split by "
        f"{split.get('rule', '?')}, before any stage trained."
    ]
    for check in heldout.get("decontamination", []):
        lines.append(
            f"- {check['stage']}: {check['contaminated']} of {check['heldout_texts']} held-out texts found in its "
            f"{check['training_texts']} training inputs (exact, or ≥ {check['threshold']:.0%} of "
            f"{check['ngram']}-grams; largest overlap {check['max_ngram_overlap']:.0%}): "
            f"{'leak-free' if check['passed'] else 'CONTAMINATED'}"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    lines = [f"# alignlab comparison: {report['run']}", ""]
    lines += [
        "## The answer",
        "",
        f"**Did SFT before DPO help?** {report['answer']['text']}.",
        "",
        f"Primary metric (named in the config before the run): {report['answer']['metric']}; every other "
        f"difference below is secondary or descriptive. Family correction: {report['correction']}. {ONE_SEED}",
        "",
        *control_lines(report.get("controls") or []),
        "## Held-out data",
        "",
        *heldout_lines(report.get("heldout") or {}),
        "",
        "## Pipeline health (not an answer to the question)",
        "",
        f"**{'GO' if report['go'] else 'NO-GO'}**: the pipeline ran as it should · parity: "
        f"{report['parity']['verdict']}",
        "",
    ]
    metrics = [m for m in METRICS if m in report["table"][methods[0]]] if methods else []
    lines += [
        "## Methods (mean [95% CI])",
        "",
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_fmt(report["table"][m].get(metric, {})) for m in methods) + " |")
    lines += ["", f"n = {report['table'][methods[0]]['preference_accuracy']['n'] if methods else 0} pairs", ""]
    lines += [
        "## Paired differences (a − b)",
        "",
        "| a | b | metric | role | mean [95% CI] | n (prompts) | prompts won/lost/tied | sign-flip p | adjusted p "
        "| sign test p | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["differences"]:
        p, adjusted, sign = ("–" if d.get(k) is None else f"{d[k]:.3g}" for k in ("p", "p_adjusted", "sign_test_p"))
        lines.append(
            f"| {d['a']} | {d['b']} | {d['metric']} | {d['role']} | {_fmt(d)} | {d['n']} ({d['n_prompts']}) "
            f"| {d['wins']}/{d['losses']}/{d['ties']} | {p} | {adjusted} | {sign} | {d['verdict']} |"
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
