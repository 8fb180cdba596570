"""A group of runs that differ only in their training seed: seed-aware intervals and the A/A control.

One run's intervals resample prompts: they cannot see training noise. With several seeds of one config,
`group_report` gives the headline difference (SFT→DPO − DPO-only on every compared metric) with an interval that
resamples seeds *and* prompts, and runs the A/A control: each method against itself across seeds, tested as if the
seeds were two methods, so the share of "significant" differences between identical methods is the per-run
interval's false-positive rate, measured. `alignlab seeds` runs the group in one process and writes the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.core.configs import PRIMARY_PAIR, UNTRAINED, RunSpec, with_seed
from pipeline.core.home import alignlab_home
from pipeline.core.metrics import METRICS
from pipeline.core.stats import aa_false_positives, seeds_and_prompts_ci
from pipeline.stages import read_jsonl
from pipeline.stages.compare import add_implicit_rewards, compared, metric_rows, metric_values
from pipeline.stages.evaluate import PAIRS_OUT, SAMPLES_OUT


def read_seed(eval_dirs: dict[str, Path]) -> tuple[dict, dict]:
    """(pair rows by pair id, sample rows by prompt id) of each method of one seed's run."""
    pair_rows = {m: {r["pair_id"]: r for r in read_jsonl(d / PAIRS_OUT)} for m, d in eval_dirs.items()}
    sample_rows = {m: {r["prompt_id"]: r for r in read_jsonl(d / SAMPLES_OUT)} for m, d in eval_dirs.items()}
    add_implicit_rewards(pair_rows)
    return pair_rows, sample_rows


def _by_prompt(values: dict[str, float], clusters: dict[str, str]) -> dict[str, float]:
    """Item values averaged per prompt (pairs share prompts; samples are prompts already)."""
    grouped: dict[str, list[float]] = {}
    for item, value in values.items():
        grouped.setdefault(clusters.get(item, item), []).append(value)
    return {prompt: sum(v) / len(v) for prompt, v in grouped.items()}


def group_report(seeds: list[dict[str, Path]], confidence: float = 0.95, n_resamples: int = 1000) -> dict[str, Any]:
    """Seed-aware headline intervals and the A/A control over a group of runs (one dict of eval dirs per seed)."""
    runs = [read_seed(dirs) for dirs in seeds]
    clusters = {pid: r["prompt_id"] for pair_rows, _ in runs for rows in pair_rows.values() for pid, r in rows.items()}
    a, b = PRIMARY_PAIR
    headline, per_method = {}, {}
    for m in compared():
        values = [
            {method: metric_values(m, metric_rows(m, pair_rows, sample_rows, method)) for method in sample_rows}
            for pair_rows, sample_rows in runs
        ]
        if all(v.get(a) and v.get(b) for v in values):
            per_seed = [_by_prompt(v[a], clusters) for v in values]
            baseline = [_by_prompt(v[b], clusters) for v in values]
            diffs = [{p: x[p] - y[p] for p in x.keys() & y.keys()} for x, y in zip(per_seed, baseline, strict=True)]
            headline[m.name] = seeds_and_prompts_ci(diffs, confidence, n_resamples)
        for method in values[0]:
            if method != UNTRAINED and all(v.get(method) for v in values):  # no seed touches the base model
                per_method[f"{method}:{m.name}"] = [v[method] for v in values]
    aa = aa_false_positives(per_method, confidence, n_resamples, clusters=clusters)
    return {"seeds": len(seeds), "comparison": f"{a} − {b}", "headline": headline, "aa": aa}


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# Seed group: {report['seeds']} training seeds of one config",
        "",
        f"{report['comparison']}, intervals resampling seeds and prompts (beside: prompts only, seed-averaged):",
        "",
    ]
    for name, stat in report["headline"].items():
        label = METRICS[name].label if name in METRICS else name
        if stat["ci_low"] is None:
            lines.append(f"- {label}: {stat['mean']} (too few seeds or prompts for an interval)")
            continue
        prompt_only = stat["prompt_only"]
        lines.append(
            f"- {label}: {stat['mean']:+.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}] over {stat['n_seeds']} "
            f"seeds × {stat['n_prompts']} prompts (prompts only: [{prompt_only['ci_low']:.3f}, "
            f"{prompt_only['ci_high']:.3f}])"
        )
    return "\n".join([*lines, "", report["aa"]["text"], ""])


def run_group(spec: RunSpec, seeds: list[int], home: str | Path | None = None, on_progress=None) -> dict[str, Any]:
    """Run the DAG once per training seed (data stages shared from the artifact store) and report on the group."""
    from pipeline.dag import run_dag

    eval_dirs = []
    for seed in seeds:
        dag = run_dag(with_seed(spec, seed, "training"), home, on_progress)
        eval_dirs.append({r.role: Path(r.out_dir) for r in dag.results.values() if "samples" in r.outputs})
    report = group_report(eval_dirs, spec.compare.confidence, spec.compare.n_bootstrap)
    out = Path(home or alignlab_home()) / "runs" / f"{spec.name}-seeds-{time.strftime('%Y%m%d-%H%M%S')}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(render(report))
    report["path"] = str(out.with_suffix(".md"))
    return report
