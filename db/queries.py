"""Read models for the dashboard and the CLI: plain dicts, read through the non-blocking read engine."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, func, select

from db.models import (
    Artifact,
    Evaluation,
    JudgeFigure,
    Judgement,
    JudgeVerdict,
    Metric,
    Preview,
    Run,
    Sample,
    StageRun,
    ValidationReportRow,
    judged_pair,
)
from db.session import read_session
from pipeline.core.configs import changes_result, flatten, migrate_spec
from pipeline.core.metrics import sample_flags
from pipeline.core.registry import plan
from pipeline.core.text import same_text

DONE = ("succeeded", "cached")


def list_runs(
    status: str | None = None, tag: str | None = None, limit: int = 200, engine: Engine | None = None
) -> list[dict[str, Any]]:
    """Runs, newest first, with stage progress (done / total)."""
    with read_session(engine) as s:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if status:
            query = query.where(Run.status == status)
        runs = s.scalars(query).all()
        listed = StageRun.run_id.in_([run.id for run in runs])  # count stages of the listed runs only
        counts = dict(
            s.execute(
                select(StageRun.run_id, func.count()).where(listed, StageRun.status.in_(DONE)).group_by(StageRun.run_id)
            ).all()
        )
        totals = dict(s.execute(select(StageRun.run_id, func.count()).where(listed).group_by(StageRun.run_id)).all())
        rows = []
        for run in runs:
            if tag and tag not in (run.tags or []):
                continue
            duration = (
                (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else None
            )
            rows.append(
                {
                    "id": run.id,
                    "name": run.name,
                    "status": run.status,
                    "preset": run.preset,
                    "base_model": run.base_model,
                    "tags": run.tags or [],
                    "created_at": run.created_at,
                    "duration_s": duration,
                    "done": counts.get(run.id, 0),
                    "total": totals.get(run.id, 0),
                    "group": run.group_name,
                    "error": run.error,
                }
            )
        return rows


def run_detail(run_id: int, engine: Engine | None = None) -> dict[str, Any] | None:
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        if run is None:
            return None
        keys = [st.artifact_key for st in run.stages if st.artifact_key]
        # which run first made each artifact: a cached stage of this run reused that run's work
        made_by = dict(s.execute(select(Artifact.key, Artifact.first_run_id).where(Artifact.key.in_(keys))).all())
        return {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "spec": run.spec,
            "tags": run.tags,
            "notes": run.notes,
            "error": run.error,
            "created_at": run.created_at,
            "stages": [
                {
                    c: getattr(st, c)
                    for c in (
                        "id",
                        "node",
                        "stage",
                        "role",
                        "status",
                        "queue",
                        "attempt",
                        "artifact_key",
                        "error",
                        "log_tail",
                        "progress_done",
                        "progress_total",
                        "progress_message",
                        "load_info",
                        "peak_memory_bytes",
                        "device",
                        "metrics",
                        "checks",
                        "started_at",
                        "finished_at",
                        "worker",
                        "charged_seconds",
                        "cost",
                    )
                }
                | {"made_by_run": made_by.get(st.artifact_key)}
                for st in run.stages
            ],
        }


def recorded_stage_times(
    base_model: str, limit: int = 5, engine: Engine | None = None
) -> dict[tuple[str, str], list[tuple[float, dict[str, Any]]]]:
    """(wall seconds, the run's stored spec) of each (node, queue) that earlier runs of this base model computed
    (succeeded, not reused from another run), newest first, at most `limit` each: the basis of Launch's forecast,
    which scales each time to the new run's work (pipeline.core.durations.scaled_to)."""
    with read_session(engine) as s:
        rows = s.execute(
            select(StageRun.node, StageRun.queue, StageRun.started_at, StageRun.finished_at, Run.spec)
            .join(Run, Run.id == StageRun.run_id)
            .where(
                Run.base_model == base_model,
                StageRun.status == "succeeded",
                StageRun.started_at.is_not(None),
                StageRun.finished_at.is_not(None),
            )
            .order_by(StageRun.finished_at.desc())
        ).all()
    out: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for node, queue, started, finished, spec in rows:
        if len(out[(node, queue)]) < limit:
            out[(node, queue)].append(((finished - started).total_seconds(), spec))
    return dict(out)


def metric_curves(run_id: int, names: list[str] | None = None, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Step curves of a run's training stages: rows {node, name, step, value}."""
    with read_session(engine) as s:
        query = (
            select(StageRun.node, Metric.name, Metric.step, Metric.value)
            .join(StageRun, StageRun.id == Metric.stage_run_id)
            .where(Metric.run_id == run_id)
            .order_by(StageRun.node, Metric.name, Metric.step)
        )
        if names:
            query = query.where(Metric.name.in_(names))
        return [{"node": n, "name": m, "step": st, "value": v} for n, m, st, v in s.execute(query).all()]


def _evaluation_row(e: Evaluation, run_name: str) -> dict[str, Any]:
    return {
        "run_id": e.run_id,
        "run": run_name,
        "method": e.method,
        "metric": e.metric,
        "negative_type": e.negative_type,
        "value": e.value,
        "ci_low": e.ci_low,
        "ci_high": e.ci_high,
        "n": e.n,
    }


def comparison_matrix(run_ids: list[int], engine: Engine | None = None) -> list[dict[str, Any]]:
    """Overall (not per-type) evaluation rows across runs and methods, with CIs."""
    with read_session(engine) as s:
        rows = s.execute(
            select(Evaluation, Run.name)
            .join(Run, Run.id == Evaluation.run_id)
            .where(Evaluation.run_id.in_(run_ids), Evaluation.negative_type.is_(None))
        ).all()
        return [_evaluation_row(e, name) for e, name in rows]


SAMPLE_FILTERS = ("all", "flagged", "disagreeing")


def samples_side_by_side(run_id: int, only: str = "all", engine: Engine | None = None) -> list[dict[str, Any]]:
    """One row per prompt with every method's generation, stats and flags. `only="flagged"`: some output is flagged;
    `only="disagreeing"`: the methods disagree (one output flagged and another not, or reviewers' winners differ)."""
    if only not in SAMPLE_FILTERS:
        raise ValueError(f"only={only!r}: choose one of {', '.join(SAMPLE_FILTERS)}")
    with read_session(engine) as s:
        samples = s.scalars(select(Sample).where(Sample.run_id == run_id).order_by(Sample.prompt_id)).all()
        winners: dict[str, set[str]] = defaultdict(set)
        for prompt, winner in s.execute(
            select(Judgement.prompt_id, Judgement.winner).where(Judgement.run_id == run_id)
        ).all():
            winners[prompt].add(winner)
    by_prompt: dict[str, dict[str, Any]] = {}
    for sample in samples:
        row = by_prompt.setdefault(
            sample.prompt_id,
            {"prompt_id": sample.prompt_id, "prompt": sample.prompt, "reference": sample.reference, "methods": {}},
        )
        stats = sample.stats or {}
        row["methods"][sample.method] = {
            "generation": sample.generation,
            "stats": stats,
            "flags": sample_flags(stats),
        }
    rows = list(by_prompt.values())
    for row in rows:
        flagged = [bool(m["flags"]) for m in row["methods"].values()]
        row["flagged"] = any(flagged)
        row["disagreeing"] = (any(flagged) and not all(flagged)) or len(winners.get(row["prompt_id"], ())) > 1
    return rows if only == "all" else [r for r in rows if r[only]]


def per_prompt_values(run_ids: list[int], engine: Engine | None = None) -> dict[int, dict[str, dict[str, dict]]]:
    """Per run, method and sample metric: each held-out prompt's value (from the stored samples' stats), for
    statistics across runs (a seed group's intervals over seeds and prompts, its A/A control)."""
    with read_session(engine) as s:
        rows = s.execute(
            select(Sample.run_id, Sample.method, Sample.prompt_id, Sample.stats).where(Sample.run_id.in_(run_ids))
        ).all()
    values: dict[int, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for run_id, method, prompt_id, stats in rows:
        for metric, value in (stats or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[run_id][method][metric][prompt_id] = float(value)
    return {run: {m: dict(by) for m, by in methods.items()} for run, methods in values.items()}


def by_negative_type(run_ids: list[int], metric: str = "preference_accuracy", engine: Engine | None = None):
    """Per negative type and method: `metric` with its CI, across runs."""
    with read_session(engine) as s:
        rows = s.execute(
            select(Evaluation, Run.name)
            .join(Run, Run.id == Evaluation.run_id)
            .where(Evaluation.run_id.in_(run_ids), Evaluation.negative_type.is_not(None), Evaluation.metric == metric)
            .order_by(Evaluation.run_id, Evaluation.negative_type, Evaluation.method)
        ).all()
    return [_evaluation_row(e, name) for e, name in rows]


def spec_differences(run_ids: list[int], engine: Engine | None = None) -> dict[int, dict[str, Any]]:
    """Per run, the config fields whose values differ among `run_ids`, leaving out those that cannot change a result
    (`configs.RESULT_FREE_FIELDS`); specs stored in an older layout are compared in today's."""
    with read_session(engine) as s:
        stored = dict(s.execute(select(Run.id, Run.spec).where(Run.id.in_(run_ids))).all())
    specs = {i: {k: _cell(v) for k, v in flatten(migrate_spec(spec or {})).items()} for i, spec in stored.items()}
    fields = sorted({f for spec in specs.values() for f in spec if changes_result(f)})
    varying = [f for f in fields if len({json.dumps(spec.get(f)) for spec in specs.values()}) > 1]
    return {i: {f: spec.get(f) for f in varying} for i, spec in specs.items()}


def _cell(value: Any) -> Any:
    """A table cell: lists and mappings as JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def sweep(run_ids: list[int], metric: str, engine: Engine | None = None) -> list[dict[str, Any]]:
    """`metric` per run and method, with each run's values of the fields that vary across `run_ids` (a β sweep,
    seeds): the rows of a cross-run chart."""
    differences = spec_differences(run_ids, engine)
    return [
        {**row, **differences.get(row["run_id"], {})}
        for row in comparison_matrix(run_ids, engine)
        if row["metric"] == metric
    ]


def validation_reports(run_id: int, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Each hand-off's report once: a file that several stages read and checked alike (the pairs, read by both DPO
    variants and four evaluations) is one report, with the stages that checked it (`checked_by`), in DAG order.
    The stage that made a file checks more than its readers do (make_pairs: the type mix), so that is its own."""
    with read_session(engine) as s:
        rows = s.execute(
            select(ValidationReportRow, StageRun.node)
            .join(StageRun, StageRun.id == ValidationReportRow.stage_run_id)
            .where(ValidationReportRow.run_id == run_id)
            .order_by(ValidationReportRow.id)
        ).all()
    order = {node.name: i for i, node in enumerate(plan())}
    reports: dict[str, dict[str, Any]] = {}
    for row, node in sorted(rows, key=lambda r: (order.get(r[1], len(order)), r[0].id)):
        same = json.dumps(row.report, sort_keys=True, default=str)
        reports.setdefault(same, {**row.report, "checked_by": []})["checked_by"].append(node)
    return list(reports.values())


def previews(run_id: int, kind: str, engine: Engine | None = None) -> list[Any]:
    """The rows of a run's preview of `kind`, from the one stage run that made that data."""
    with read_session(engine) as s:
        maker = s.scalar(select(func.min(Preview.stage_run_id)).where(Preview.run_id == run_id, Preview.kind == kind))
        chunks = s.scalars(
            select(Preview.rows).where(Preview.stage_run_id == maker, Preview.kind == kind).order_by(Preview.id)
        ).all()
    return [row for chunk in chunks for row in chunk]


def records_total(run_id: int, kind: str, engine: Engine | None = None) -> int | None:
    """How many records of `kind` the file holds, as the stage that made it counted them (its metric of that name);
    None when it did not say."""
    with read_session(engine) as s:
        maker = s.scalar(select(func.min(Preview.stage_run_id)).where(Preview.run_id == run_id, Preview.kind == kind))
        metrics = s.scalar(select(StageRun.metrics).where(StageRun.id == maker)) if maker else None
    total = (metrics or {}).get(kind)
    return total if isinstance(total, int) else None


def blind_queue(run_id: int, a: str, b: str, reviewer: str, engine: Engine | None = None) -> dict[str, Any]:
    """What `reviewer` has left to judge of `a` vs `b`: the prompts where both wrote something different (an item
    whose two outputs are the same text is never served), less those this reviewer has judged. Returns the items
    left (by prompt id), how many there are in all and how many this reviewer has done."""
    pair = judged_pair(a, b)
    with read_session(engine) as s:
        outputs: dict[str, dict[str, Sample]] = defaultdict(dict)
        for sample in s.scalars(select(Sample).where(Sample.run_id == run_id, Sample.method.in_((a, b)))):
            outputs[sample.prompt_id][sample.method] = sample
        judged = set(
            s.scalars(
                select(Judgement.prompt_id).where(
                    Judgement.run_id == run_id, Judgement.pair == pair, Judgement.reviewer == reviewer.strip()
                )
            )
        )
    items = [
        {"prompt_id": pid, "prompt": both[a].prompt, "outputs": {a: both[a].generation, b: both[b].generation}}
        for pid, both in sorted(outputs.items())
        if len(both) == 2 and not same_text(both[a].generation, both[b].generation)
    ]
    return {
        "left": [item for item in items if item["prompt_id"] not in judged],
        "total": len(items),
        "done": sum(item["prompt_id"] in judged for item in items),
        "identical": sum(len(both) == 2 for both in outputs.values()) - len(items),
    }


def _judged(s: Any, run_id: int) -> list[tuple[Judgement, Sample, Sample]]:
    """Each judgement of a run with the two outputs it judged (as method_a, method_b); one whose outputs are the same
    text (recorded before such items were refused) is left out, so the win rates and the export count the same."""
    samples = {(x.prompt_id, x.method): x for x in s.scalars(select(Sample).where(Sample.run_id == run_id))}
    judged = []
    for j in s.scalars(select(Judgement).where(Judgement.run_id == run_id).order_by(Judgement.id)):
        left, right = samples.get((j.prompt_id, j.method_a)), samples.get((j.prompt_id, j.method_b))
        if left and right and not same_text(left.generation, right.generation):
            judged.append((j, left, right))
    return judged


def judgement_counts(run_id: int, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Per method pair from human judgements: wins (of `a`), losses and ties. Their statistics come from
    `pipeline.core.stats.win_rate`: the store reads, it does not estimate."""
    with read_session(engine) as s:
        judged = _judged(s, run_id)
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"wins": 0, "losses": 0, "ties": 0})
    for j, _, _ in judged:
        a, b = sorted((j.method_a, j.method_b))
        cell = table[(a, b)]
        if j.winner == "tie":
            cell["ties"] += 1
        elif j.winner == a:
            cell["wins"] += 1
        else:
            cell["losses"] += 1
    return [{"a": a, "b": b, **cell} for (a, b), cell in sorted(table.items())]


def judgements_as_pairs(run_id: int, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Human judgements (ties excluded) as TRL preference pairs {prompt, chosen, rejected} for a next run: the
    judgements `judgement_counts` counts as wins and losses, one pair each."""
    with read_session(engine) as s:
        judged = _judged(s, run_id)
    pairs = []
    for j, left, right in judged:
        if j.winner == "tie":
            continue
        win, lose = (left, right) if j.winner == j.method_a else (right, left)
        pairs.append(
            {
                "prompt": win.prompt,
                "chosen": " " + win.generation.strip(),
                "rejected": " " + lose.generation.strip(),
                "source": f"judgement:{j.id}",
            }
        )
    return pairs


JUDGE_FIGURE_FIELDS = ("judge", "method_a", "method_b", "statistic", "value", "ci_low", "ci_high", "n")
VERDICT_FIELDS = (
    "judge",
    "method_a",
    "method_b",
    "prompt_id",
    "outcome",
    "a_first_choice",
    "b_first_choice",
    "p_a_first",
    "identical",
    "p_a_second",
    "score_a",
    "score_b",
    "length_a",
    "length_b",
    "answers",
)


def judge_figures(run_id: int, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The judge stage's figures of each comparison (win rates, position bias, reward differences), as stored."""
    with read_session(engine) as s:
        rows = s.scalars(select(JudgeFigure).where(JudgeFigure.run_id == run_id).order_by(JudgeFigure.id)).all()
        return [{f: getattr(r, f) for f in JUDGE_FIGURE_FIELDS} for r in rows]


def judge_verdicts(run_id: int, prompt_id: str | None = None, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The judge stage's judged items of a run (of one prompt when given), in the order they were stored."""
    with read_session(engine) as s:
        query = select(JudgeVerdict).where(JudgeVerdict.run_id == run_id).order_by(JudgeVerdict.id)
        if prompt_id is not None:
            query = query.where(JudgeVerdict.prompt_id == prompt_id)
        return [{f: getattr(r, f) for f in VERDICT_FIELDS} for r in s.scalars(query)]


def judge_says(verdict: JudgeVerdict) -> str | None:
    """The judge's verdict as a method name or "tie" (a reward model: the higher score); None when unparsed."""
    if verdict.outcome is None:  # a reward model
        if verdict.score_a is None or verdict.score_b is None:
            return None
        if verdict.score_a == verdict.score_b:
            return "tie"
        return verdict.method_a if verdict.score_a > verdict.score_b else verdict.method_b
    return {"a": verdict.method_a, "b": verdict.method_b, "tie": "tie"}.get(verdict.outcome)


def judge_beside_people(run_id: int, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Every item both the judge and a reviewer judged (same run, prompt and method pair): what each said, as a
    method name or "tie", with the prompt and both outputs. The agreement statistics come from
    `pipeline.core.judging.agreement`: the store reads, it does not estimate."""
    with read_session(engine) as s:
        people = defaultdict(list)
        for j, left, right in _judged(s, run_id):
            people[(j.prompt_id, j.pair)].append((j, {left.method: left, right.method: right}))
        rows = []
        for verdict in s.scalars(select(JudgeVerdict).where(JudgeVerdict.run_id == run_id).order_by(JudgeVerdict.id)):
            said = judge_says(verdict)
            if said is None:
                continue
            for j, outputs in people.get((verdict.prompt_id, judged_pair(verdict.method_a, verdict.method_b)), []):
                rows.append(
                    {
                        "judge": verdict.judge,
                        "method_a": verdict.method_a,
                        "method_b": verdict.method_b,
                        "prompt_id": verdict.prompt_id,
                        "prompt": outputs[verdict.method_a].prompt,
                        "judge_says": said,
                        "reviewer": j.reviewer,
                        "reviewer_says": j.winner,
                        "output_a": outputs[verdict.method_a].generation,
                        "output_b": outputs[verdict.method_b].generation,
                    }
                )
        return rows


def run_choices(engine: Engine | None = None) -> list[tuple[int, str]]:
    """(id, label) of runs that have evaluations, newest first, for the Compare and Samples pickers."""
    with read_session(engine) as s:
        rows = s.execute(
            select(Run.id, Run.name, Run.status)
            .where(Run.id.in_(select(Evaluation.run_id).distinct()))
            .order_by(Run.id.desc())
        ).all()
    return [(i, f"{i}: {name} ({status})") for i, name, status in rows]


def stage_runs_by_job(job_ids: list[str], engine: Engine | None = None) -> dict[str, dict[str, Any]]:
    """RQ job id -> {run_id, node, status, error} of the stage run that job ran: a worker's job and its fate."""
    if not job_ids:
        return {}
    with read_session(engine) as s:
        rows = s.execute(
            select(StageRun.rq_job_id, StageRun.run_id, StageRun.node, StageRun.status, StageRun.error).where(
                StageRun.rq_job_id.in_(job_ids)
            )
        ).all()
    return {
        job: {"run_id": run, "node": node, "status": status, "error": error} for job, run, node, status, error in rows
    }


def pilot_prompt_means(base_model: str, instructions: str, metric: str, engine: Engine | None = None, limit: int = 5):
    """The per-prompt differences SFT→DPO − DPO-only on `metric` that the latest compared runs of this base model
    and data stored (a pilot for the power plan): (those differences, which runs); ([], "") without one."""
    with read_session(engine) as s:
        runs = s.scalars(select(Run).where(Run.base_model == base_model).order_by(Run.id.desc()).limit(200)).all()
        candidates = [r.id for r in runs if (r.spec.get("data") or {}).get("instructions") == instructions]
    means: list[float] = []
    used: list[int] = []
    for run_id in candidates:
        for diff in previews(run_id, "differences", engine):
            if (diff.get("a"), diff.get("b"), diff.get("metric")) == ("sft_dpo", "dpo_only", metric):
                if diff.get("prompt_means"):
                    means += list(diff["prompt_means"])
                    used.append(run_id)
        if len(used) >= limit:
            break
    return means, ("runs " + ", ".join(map(str, used)) if used else "")
