"""judge: the methods' held-out answers compared by a judge (pairwise, both orders) or scored by a reward model.

Reads the four evaluations' samples (one generation per held-out prompt and method) and, for every comparison in
`JUDGED` whose two methods were evaluated, judges every prompt both methods answered: a pairwise judge sees each
pair twice (a in slot A, then b in slot A), all items of all comparisons in one batched call; a reward model scores
each (method, prompt) answer once. One judge model is resident, in this process, for the stage.

Writes one row per (comparison, prompt) to `verdicts.jsonl` and the figures of each comparison (raw and
length-controlled win rates, position bias, unparsed answers; or the paired reward difference) to `summary.json`,
both computed by `pipeline.core.judging` from the stored rows alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_jsonl
from pipeline.core.configs import METHODS, RunSpec
from pipeline.core.errors import ConfigError
from pipeline.core.home import alignlab_home
from pipeline.core.judging import JUDGED, SlotVerdict, outcome, reward_difference, win_rate_stats
from pipeline.core.registry import stage_of_module
from pipeline.core.text import normalize_text
from pipeline.stages import Progress, ProgressFn, StageResult, no_progress, read_jsonl, write_json
from pipeline.stages.evaluate import SAMPLES_OUT

STAGE = stage_of_module(__name__)
VERDICTS_OUT, SUMMARY_OUT = "verdicts.jsonl", "summary.json"
CACHE_DIR = "judge_cache"  # under the worker's ALIGNLAB_HOME: endpoint answers, kept across attempts


def load_answers(inputs: dict[str, Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """method -> prompt id -> its evaluation sample (prompt, generation), for each evaluated method."""
    answers = {}
    for method in METHODS:
        if method in inputs:
            answers[method] = {row["prompt_id"]: row for row in read_jsonl(inputs[method] / SAMPLES_OUT)}
    return answers


def judged_prompts(answers: dict[str, dict[str, dict]], max_prompts: int) -> list[tuple[str, str, list[str]]]:
    """(method a, method b, prompt ids) of every comparison both of whose methods were evaluated."""
    comparisons = []
    for a, b in JUDGED:
        if a in answers and b in answers:
            common = sorted(set(answers[a]) & set(answers[b]))
            comparisons.append((a, b, common[:max_prompts] if max_prompts else common))
    if not comparisons or not any(ids for _, _, ids in comparisons):
        raise ConfigError(
            f"judge: no comparison to judge; it needs the evaluations of two methods of {', '.join(map(str, JUDGED))} "
            f"on common prompts, and has {', '.join(answers) or 'none'}"
        )
    return comparisons


def _row(judge: str, a: str, b: str, pid: str, answers: dict) -> dict[str, Any]:
    return {
        "judge": judge,
        "method_a": a,
        "method_b": b,
        "prompt_id": pid,
        "length_a": len(answers[a][pid]["generation"]),
        "length_b": len(answers[b][pid]["generation"]),
    }


def pairwise_rows(judge: Any, comparisons: list, answers: dict, progress: Progress) -> list[dict[str, Any]]:
    """Every (comparison, prompt) judged in both orders; the two orders of an item sit side by side in a batch."""
    from pipeline.judges import JudgeItem

    items, keys, identical = [], [], []
    for a, b, ids in comparisons:
        for pid in ids:
            answer_a, answer_b = answers[a][pid]["generation"], answers[b][pid]["generation"]
            if normalize_text(answer_a) == normalize_text(answer_b):  # nothing to judge: a tie, asked of no one
                identical.append((a, b, pid))
                continue
            # the judge reads the user's instruction, not the chat-templated prompt the models were given
            instruction = answers[a][pid].get("instruction") or answers[a][pid]["prompt"]
            items += [JudgeItem(instruction, answer_a, answer_b), JudgeItem(instruction, answer_b, answer_a)]
            keys.append((a, b, pid))
    verdicts = judge.judge(items, lambda done, total: progress.progress(done, total, "judging both orders"))
    rows = []
    for index, (a, b, pid) in enumerate(keys):
        a_first, b_first = verdicts[2 * index], verdicts[2 * index + 1]
        rows.append({**_row(judge.name, a, b, pid, answers), **_verdict_fields(a_first, b_first), "identical": False})
    for a, b, pid in identical:
        tie = {"outcome": "tie", "a_first_choice": None, "b_first_choice": None, "p_a_first": None}
        tie |= {"p_a_second": None, "answers": None, "identical": True}
        rows.append({**_row(judge.name, a, b, pid, answers), **tie})
    return rows


def _verdict_fields(a_first: SlotVerdict, b_first: SlotVerdict) -> dict[str, Any]:
    return {
        "outcome": outcome(a_first, b_first),
        "a_first_choice": a_first.choice,
        "b_first_choice": b_first.choice,
        # P(judge prefers a) in each order, where the judge exposes probabilities
        "p_a_first": a_first.p_first,
        "p_a_second": None if b_first.p_first is None else 1.0 - b_first.p_first,
        "answers": [v.answer for v in (a_first, b_first)] if a_first.answer is not None else None,
    }


def reward_rows(scorer: Any, comparisons: list, answers: dict, progress: Progress) -> list[dict[str, Any]]:
    """Each (method, prompt) answer scored once; one row per (comparison, prompt) with both scores."""
    needed = sorted({(m, pid) for a, b, ids in comparisons for m in (a, b) for pid in ids})
    scores = scorer.score(
        [answers[m][pid]["prompt"] for m, pid in needed],
        [answers[m][pid]["generation"] for m, pid in needed],
        lambda done, total: progress.progress(done, total, "reward model scoring"),
    )
    by_answer = dict(zip(needed, scores, strict=True))
    return [
        {**_row(scorer.name, a, b, pid, answers), "score_a": by_answer[(a, pid)], "score_b": by_answer[(b, pid)]}
        for a, b, ids in comparisons
        for pid in ids
    ]


def summarize(rows: list[dict[str, Any]], kind: str, spec: RunSpec) -> list[dict[str, Any]]:
    """The figures of each comparison, from the stored rows alone."""
    config = spec.judge
    ci = {"confidence": config.confidence, "n_resamples": config.n_bootstrap, "seed": config.seed}
    by_comparison: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:  # one pass; dicts keep the comparisons in the order they were judged
        by_comparison[(r["judge"], r["method_a"], r["method_b"])].append(r)
    out = []
    for (judge, a, b), items in by_comparison.items():
        if kind == "reward_model":
            figures = reward_difference(
                {r["prompt_id"]: r["score_a"] for r in items}, {r["prompt_id"]: r["score_b"] for r in items}, **ci
            )
        else:
            figures = win_rate_stats(items, **ci)
        for statistic, stat in figures.items():
            out.append(
                {
                    "judge": judge,
                    "method_a": a,
                    "method_b": b,
                    "statistic": statistic,
                    "value": stat.get("mean"),
                    "ci_low": stat.get("ci_low"),
                    "ci_high": stat.get("ci_high"),
                    "n": stat.get("n", 0),
                }
            )
    return out


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    from pipeline.judges import JUDGES, RewardScorer
    from pipeline.models import loaded, prepare_model

    progress = Progress(STAGE, on_progress)
    config = spec.judge
    answers = load_answers(inputs)
    comparisons = judged_prompts(answers, config.max_prompts)
    load_info = None
    tokens = 0
    if config.kind == "endpoint":
        judge = JUDGES["endpoint"](config, alignlab_home() / CACHE_DIR)
        rows = pairwise_rows(judge, comparisons, answers, progress)
        progress.log(f"judge {judge.name}: {judge.requests} requests sent, the rest answered from the cache")
    else:
        prepare_model(config.model.name_or_path, on_progress or no_progress)
        head = "sequence_classification" if config.kind == "reward_model" else "causal_lm"
        with loaded(config.model, head=head) as m:
            if config.kind == "reward_model":
                scorer = RewardScorer(m, config)
                rows = reward_rows(scorer, comparisons, answers, progress)
            else:
                scorer = JUDGES["model"](m, config)
                rows = pairwise_rows(scorer, comparisons, answers, progress)
            tokens = scorer.tokens
        load_info = m.info.to_dict()
    summary = summarize(rows, config.kind, spec)
    write_jsonl(out_dir / VERDICTS_OUT, rows)
    write_json(out_dir / SUMMARY_OUT, summary)
    seconds = progress.elapsed()
    unparsed = sum(r.get("outcome") == "unparsed" for r in rows)
    metrics = {
        "judge": rows[0]["judge"] if rows else None,
        "kind": config.kind,
        "items": len(rows),
        "unparsed": unparsed,
        "judge_tokens_per_s": round(tokens / seconds, 1) if tokens and seconds else None,
    }
    if unparsed:
        progress.log(f"judge: {unparsed} of {len(rows)} items had an answer naming neither A nor B (shown as unparsed)")
    return StageResult(
        stage=STAGE,
        outputs={"verdicts": VERDICTS_OUT, "summary": SUMMARY_OUT},
        metrics=metrics,
        load_info=load_info,
        seconds=seconds,
    )
