"""Job functions: thin adapters from the queue to `pipeline.dag.run_node`. Only these are allowlisted.

A job gets ids, a node name and the RunSpec as a plain dict (never data, pickles or secrets), runs the node
through the artifact store (a complete identical node is reused at once: status `cached`), turns progress
into events, emits what the dashboard needs (reports, previews, samples, evaluations) and re-raises on
failure so RQ marks the job failed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job

from pipeline.core import registry
from pipeline.core.errors import StopRequested
from workers.events import EventEmitter, EventKind, cancel_key, preempt_key

PROGRESS_INTERVAL_S = 0.5


class JobCancelled(Exception):
    """The run was cancelled: raised at the stage's next progress report (cooperative cancellation)."""


def metric_values(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a training log row worth a curve (not its step counter or wall clock)."""
    return {k: v for k, v in row.items() if isinstance(v, int | float) and k not in ("step", "time")}


# when this process's job last reported (any event, a training micro-batch's tick included): a cancelled job that
# stays silent past the worker's grace is stuck, and is ended with its process (`workers.worker`)
LAST_REPORT = {"at": time.monotonic()}


def _progress_adapter(emitter: EventEmitter, run_id: int, worker_name: str | None):
    last = {"progress": 0.0, "cancel_check": 0.0}

    def on_progress(event: dict[str, Any]) -> None:
        # the event first, the stop check after: a step that was logged is recorded even when the stop lands on it
        now = time.monotonic()
        LAST_REPORT["at"] = now
        kind = event["kind"]
        if kind == "progress":
            final = event["done"] >= event["total"]
            if final or now - last["progress"] >= PROGRESS_INTERVAL_S:
                last["progress"] = now
                emitter.emit(EventKind.progress, done=event["done"], total=event["total"], message=event["message"])
        elif kind == "log":
            emitter.emit(EventKind.log, message=event["message"])
        elif kind == "metric":
            emitter.emit(EventKind.metric, step=event["step"], values=metric_values(event["values"]))
        elif kind == "resumed":
            emitter.emit(EventKind.resumed, step=event["step"])
        elif kind == "validation":
            emitter.emit(EventKind.validation, report=event["report"])
        if now - last["cancel_check"] > PROGRESS_INTERVAL_S:
            last["cancel_check"] = now
            try:
                cancelled = emitter.connection.exists(cancel_key(run_id))
                preempted = bool(worker_name) and emitter.connection.exists(preempt_key(worker_name))
            except (redis.ConnectionError, redis.TimeoutError):
                cancelled = preempted = False  # Redis unreachable: keep training; the next check will know
            if cancelled:
                raise JobCancelled(f"run {run_id} was cancelled")
            if preempted:
                raise StopRequested(f"worker {worker_name} is shutting down")

    return on_progress


def _emit_outputs(emitter: EventEmitter, result: Any) -> None:
    """What the dashboard shows of a finished node: previews, samples, evaluations (bounded)."""
    out_dir = Path(result.out_dir)
    if result.reused:  # nothing was emitted while it ran for another run: send the stored reports and curves
        for report in result.reports:
            emitter.emit(EventKind.validation, report=report)
        log = out_dir / "train_log.jsonl"
        if log.exists():
            emitter.emit(EventKind.resumed, step=0)  # the stored curve replaces whatever an earlier attempt sent
            for line in log.read_text().splitlines():
                row = json.loads(line)
                emitter.emit(EventKind.metric, step=row["step"], values=metric_values(row))
    for kind, rows in result.previews.items():
        if kind in ("samples", "report"):
            continue
        emitter.emit_rows(EventKind.preview, rows, preview=kind)
    for output in registry.stage(result.stage).emits:
        OUTPUT_EMITTERS[output](emitter, result, out_dir)


def _emit_samples(emitter: EventEmitter, result: Any, out_dir: Path) -> None:
    samples = [json.loads(line) for line in (out_dir / result.outputs["samples"]).read_text().splitlines() if line]
    emitter.emit_rows(EventKind.samples, samples, method=result.role)


def _emit_comparison(emitter: EventEmitter, result: Any, out_dir: Path) -> None:
    report = json.loads((out_dir / result.outputs["report"]).read_text())
    rows = [
        {"method": method, "metric": metric, "negative_type": None, **_stat(stat)}
        for method, metrics in report["table"].items()
        for metric, stat in metrics.items()
    ] + [
        {"method": method, "metric": "preference_accuracy", "negative_type": negative_type, **_stat(stat)}
        for negative_type, per_method in report["by_negative_type"].items()
        for method, stat in per_method.items()
    ]
    emitter.emit_rows(EventKind.evaluation, rows)
    emitter.emit_rows(EventKind.preview, report["differences"], preview="differences")
    emitter.emit(
        EventKind.preview,
        rows=[{k: report.get(k) for k in VERDICT_KEYS}],
        preview="verdict",
    )


def _emit_verdicts(emitter: EventEmitter, result: Any, out_dir: Path) -> None:
    rows = [json.loads(line) for line in (out_dir / result.outputs["verdicts"]).read_text().splitlines() if line]
    emitter.emit_rows(EventKind.verdicts, rows)
    emitter.emit_rows(EventKind.judge_figures, json.loads((out_dir / result.outputs["summary"]).read_text()))


# the report's verdict-level parts, stored as the run's `verdict` preview for the Compare page
VERDICT_KEYS = ("parity", "checklist", "go", "headline", "answer", "correction", "heldout", "controls")

# what a stage declares it `emits` -> how its job sends that to the store
OUTPUT_EMITTERS = {"samples": _emit_samples, "comparison": _emit_comparison, "verdicts": _emit_verdicts}


def _stat(stat: dict[str, Any]) -> dict[str, Any]:
    return {
        "value": stat.get("mean"),
        "ci_low": stat.get("ci_low"),
        "ci_high": stat.get("ci_high"),
        "n": stat.get("n", 0),
    }


def ping_job(sent_at: float) -> dict:
    """A no-op job for health checks and the queue-latency benchmark: when and in which process it ran."""
    return {"sent_at": sent_at, "ran_at": time.time(), "pid": os.getpid()}


def run_stage_job(run_id: int, stage_run_id: int, node: str, spec: dict[str, Any]) -> dict:
    """Run one DAG node of a run. Arguments are JSON: ids, the node's name and the RunSpec dict.

    Where it reads and writes is the worker's own business: ALIGNLAB_HOME and ALIGNLAB_DATA_ROOTS of this process,
    never a path the job brings."""
    from pipeline.core.configs import RunSpec, from_dict
    from pipeline.core.registry import node_by_name
    from pipeline.dag import artifact_keys, default_store, run_node
    from pipeline.paths import BLOB_PREFIX, allowed_roots, confine_spec

    job = get_current_job()
    emitter = EventEmitter(job.connection, run_id, stage_run_id)
    emitter.emit(EventKind.started, job_id=job.id, worker=job.worker_name or socket.gethostname())
    try:
        run_spec = from_dict(RunSpec, spec)
        confine_spec(run_spec, allowed_roots())
        if run_spec.data.instructions.startswith(BLOB_PREFIX):
            from pipeline.core.home import alignlab_home
            from workers.blobs import materialize

            materialize(job.connection, run_spec.data.instructions, alignlab_home())
        keys = artifact_keys(run_spec)
        store = default_store()
        result = run_node(
            run_spec, store, node_by_name(node), keys, _progress_adapter(emitter, run_id, job.worker_name)
        )
        _emit_outputs(emitter, result)
    except StopRequested as exc:
        # preemption: the checkpoint is saved; requeue at once so another worker resumes from it
        job.retries_left = max(job.retries_left or 0, 1)
        job.retry_intervals = [0]
        emitter.emit(EventKind.preempted, reason=str(exc))
        raise
    except BaseException as exc:  # noqa: BLE001  (report every failure, then let RQ see it)
        from pipeline.core.errors import AlignlabError

        if isinstance(exc, AlignlabError | JobCancelled):
            # a user-caused error or a cancel: retrying cannot help, so RQ must not retry it
            job.retries_left = 0
            job.connection.hset(job.key, "retries_left", 0)
        emitter.emit(
            EventKind.failed,
            error=f"{type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
            cancelled=isinstance(exc, JobCancelled),
        )
        raise
    emitter.emit(
        EventKind.finished,
        status="cached" if result.reused else "succeeded",
        artifact_key=result.key,
        location=result.out_dir,
        metrics=result.metrics,
        checks=result.checks,
        load_info=result.load_info,
        seconds=result.seconds,
    )
    return {"artifact_key": result.key, "reused": result.reused}
