"""The scheduler: plans a RunSpec into RQ jobs; cancel, retry, resume; reconcile with RQ.

The database is the authority on the DAG. RQ's `depends_on` is only the fast path: a failed, stopped or
cancelled parent leaves its dependents deferred forever and a missing parent counts as met, so this module
cancels dependents itself and re-plans from the database's stage states. Completed stages come back from the
artifact store at once when re-enqueued (the job finds them complete: status `cached`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from sqlalchemy import Engine, select

from db.models import Preview, Run, StageRun, StageStatus, utcnow
from db.session import write_engine, write_session
from pipeline.core.configs import QUEUE_NAMES, RunSpec, preflight_spec, to_dict, with_seed
from pipeline.core.errors import ConfigError
from pipeline.dag import Node, plan, selected_nodes
from pipeline.paths import allowed_roots, confine_spec
from workers.events import cancel_key
from workers.queues import SERIALIZER, fetch_job, queue

log = logging.getLogger("alignlab.scheduler")
JOB_FUNCTION = "workers.jobs.run_stage_job"
RESULT_TTL_S = 7 * 24 * 3600
STALE_HEARTBEAT_S = 30  # 3 x the worker's job monitoring interval: the worker (or its pod) is gone


def _abandon(job, reason: str, connection: redis.Redis) -> None:
    """Tell RQ a started job is dead now (its registry cleanup would take minutes), without retrying it."""
    from rq.registry import FailedJobRegistry

    StartedJobRegistry(job.origin, connection=connection, serializer=SERIALIZER).remove_executions(job)
    job.set_status(JobStatus.FAILED)
    FailedJobRegistry(job.origin, connection=connection, serializer=SERIALIZER).add(job, exc_string=reason)


def _heartbeat_age(job) -> float | None:
    from datetime import UTC, datetime

    job.refresh()
    if job.last_heartbeat is None:
        return None
    beat = job.last_heartbeat if job.last_heartbeat.tzinfo else job.last_heartbeat.replace(tzinfo=UTC)
    return (datetime.now(UTC) - beat).total_seconds()


def spec_hash(spec: RunSpec) -> str:
    return hashlib.sha256(json.dumps(to_dict(spec), sort_keys=True).encode()).hexdigest()


def _job_id(run_id: int, node: str, attempt: int) -> str:
    return f"alignlab-{run_id}-{node}-{attempt}"


def _dependents(node_name: str) -> set[str]:
    """Every node downstream of `node_name`."""
    out: set[str] = set()
    frontier = {node_name}
    while frontier:
        frontier = {n.name for n in plan() for _, dep in n.deps if dep in frontier} - out
        out |= frontier
    return out


def _enqueue(
    connection: redis.Redis,
    run: Run,
    spec: RunSpec,
    stage_runs: dict[str, StageRun],
    to_run: list[Node],
    running_jobs: dict[str, str | None] | None = None,
) -> None:
    """Enqueue `to_run` (in DAG order) with depends_on on the ones enqueued in the same call and on the jobs of
    `running_jobs` (node -> RQ job id) that are still at work."""
    enqueued: dict[str, str | None] = dict(running_jobs or {})
    for node in to_run:
        stage_run = stage_runs[node.name]
        job_id = _job_id(run.id, node.name, stage_run.attempt)
        depends = [enqueued[dep] for _, dep in node.deps if enqueued.get(dep)]
        queue(stage_run.queue, connection).enqueue_call(
            JOB_FUNCTION,
            args=(run.id, stage_run.id, node.name, to_dict(spec)),
            timeout=spec.execution.timeout_for(node.stage),
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
            job_id=job_id,
            depends_on=depends or None,
            retry=Retry(max=spec.execution.retries) if spec.execution.retries else None,
            meta={"run_id": run.id, "stage_run_id": stage_run.id, "node": node.name},
        )
        stage_run.rq_job_id = job_id
        enqueued[node.name] = job_id


def submit(
    spec: RunSpec,
    connection: redis.Redis,
    engine: Engine | None = None,
    *,
    tags: list[str] | None = None,
    group: str | None = None,
    parent_id: int | None = None,
) -> int:
    """Write the Run and its StageRuns, enqueue one job per selected node; returns the run id."""
    confine_spec(spec, allowed_roots())
    nodes = selected_nodes(spec)
    with write_session(engine) as session:
        run = Run(
            name=spec.name,
            spec=to_dict(spec),
            spec_hash=spec_hash(spec),
            preset=spec.preset,
            base_model=spec.base_model.name_or_path,
            tags=list(tags or []),
            group_name=group,
            parent_id=parent_id,
            status="queued",
        )
        session.add(run)
        session.flush()
        stage_runs = {
            node.name: StageRun(
                run_id=run.id,
                node=node.name,
                stage=node.stage,
                role=node.role,
                queue=spec.execution.queue_for(node.stage),
                status=StageStatus.queued.value,
            )
            for node in nodes
        }
        session.add_all(stage_runs.values())
        session.flush()
        _enqueue(connection, run, spec, stage_runs, nodes)
        return run.id


def submit_seeds(
    spec: RunSpec,
    seeds: list[int],
    connection: redis.Redis,
    engine: Engine | None = None,
    *,
    scope: str = "training",
    tags: list[str] | None = None,
    parent_id: int | None = None,
) -> list[int]:
    """One run per seed (see `configs.with_seed`), launched as one group; returns the run ids in seed order."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds}: give one or more distinct seeds")
    group = f"{spec.name}-seeds-{uuid.uuid4().hex[:6]}"
    return [
        submit(with_seed(spec, seed, scope), connection, engine, tags=tags, group=group, parent_id=parent_id)
        for seed in seeds
    ]


def submit_preflight(spec: RunSpec, connection: redis.Redis, engine: Engine | None = None) -> int:
    """The whole DAG at tiny scale on the configured model (`configs.preflight_spec`), tagged `preflight`."""
    return submit(preflight_spec(spec), connection, engine, tags=["preflight"])


def record_preflight(
    spec: RunSpec, result: dict[str, Any], engine: Engine | None = None, *, checks_only: bool = False
) -> int:
    """Store an `alignlab preflight` go/no-go (run on a pod) as a run tagged `preflight`, shown on the dashboard."""
    status = "succeeded" if result["go"] else "failed"
    now = utcnow()
    with write_session(engine) as session:
        run = Run(
            name=f"{spec.name}-preflight",
            spec=to_dict(spec if checks_only else preflight_spec(spec)),
            spec_hash=spec_hash(spec),
            preset=spec.preset,
            base_model=spec.base_model.name_or_path,
            tags=["preflight"],
            status=status,
            error=None
            if result["go"]
            else "NO-GO: "
            + "; ".join(
                f"{c['item']}: {c['reason']}" for c in result["checklist"] if c["required"] and not c["passed"]
            ),
            started_at=now,
            finished_at=now,
        )
        session.add(run)
        session.flush()
        stage = StageRun(run_id=run.id, node="preflight", stage="preflight", queue="local", status=status)
        session.add(stage)
        session.flush()
        session.add(Preview(run_id=run.id, stage_run_id=stage.id, kind="preflight", rows=[result]))
        return run.id


def cancel(run_id: int, connection: redis.Redis, engine: Engine | None = None) -> None:
    """Cancel queued jobs, stop the running one, mark every unfinished stage cancelled."""
    connection.set(cancel_key(run_id), "1", ex=24 * 3600)  # cooperative: the job raises at its next progress
    with write_session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        for stage_run in run.stages:
            if StageStatus(stage_run.status).final:
                continue
            job = fetch_job(stage_run.rq_job_id, connection) if stage_run.rq_job_id else None
            if job is not None:
                if job.get_status(refresh=True) == JobStatus.STARTED:
                    try:
                        send_stop_job_command(connection, job.id, serializer=SERIALIZER)
                    except InvalidJobOperation:
                        pass  # it finished or has not started on a worker yet; cancel below covers it
                else:
                    job.cancel()
            stage_run.status = StageStatus.cancelled.value
            stage_run.finished_at = utcnow()
            stage_run.error = stage_run.error or "cancelled by user"
        run.status = "cancelled"
        run.finished_at = utcnow()


@dataclass
class Replanned:
    """What a resume or retry did: the nodes re-enqueued, and the ones it left running (their dependents wait)."""

    enqueued: list[str]
    left_running: list[str]

    def __str__(self) -> str:
        text = f"re-enqueued {', '.join(self.enqueued) or 'nothing (every stage is complete or running)'}"
        if self.left_running:
            text += f"; left {', '.join(self.left_running)} running (what needs them waits for them)"
        return text


def _replan(run_id: int, connection: redis.Redis, engine: Engine | None, nodes_to_run: set[str] | None) -> Replanned:
    connection.delete(cancel_key(run_id))
    with write_session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        from pipeline.core.configs import from_dict

        spec = from_dict(RunSpec, run.spec)
        by_node = {s.node: s for s in run.stages}
        running = [n for n, s in by_node.items() if s.status == StageStatus.running]
        wanted = [
            node
            for node in plan(spec)
            if node.name in by_node
            and not StageStatus(by_node[node.name].status).done
            and node.name not in running
            and (nodes_to_run is None or node.name in nodes_to_run)
        ]
        for node in wanted:
            stage_run = by_node[node.name]
            old = fetch_job(stage_run.rq_job_id, connection) if stage_run.rq_job_id else None
            if old is not None and old.get_status(refresh=True) in (
                JobStatus.QUEUED,
                JobStatus.DEFERRED,
                JobStatus.SCHEDULED,
            ):
                old.cancel()  # replaced by the new attempt below: never two jobs for one stage
            stage_run.attempt += 1
            stage_run.status = StageStatus.queued.value
            stage_run.error = None
            stage_run.started_at = stage_run.finished_at = None
            stage_run.progress_done = stage_run.progress_total = 0
        run.status, run.finished_at, run.error = ("running" if running else "queued"), None, None
        session.flush()
        # a re-enqueued stage that needs a still-running one waits on that stage's job
        _enqueue(connection, run, spec, by_node, wanted, {n: by_node[n].rq_job_id for n in running})
        return Replanned([node.name for node in wanted], running)


def resume(run_id: int, connection: redis.Redis, engine: Engine | None = None) -> Replanned:
    """Re-enqueue every stage that is neither complete nor running; training resumes from its last checkpoint."""
    reconcile(connection, engine)
    return _replan(run_id, connection, engine, None)


def retry(stage_run_id: int, connection: redis.Redis, engine: Engine | None = None) -> Replanned:
    """Re-enqueue one stage and its unfinished dependents."""
    with write_session(engine) as session:
        stage_run = session.get(StageRun, stage_run_id)
        if stage_run is None:
            raise KeyError(f"no stage run {stage_run_id}")
        run_id, node = stage_run.run_id, stage_run.node
    return _replan(run_id, connection, engine, {node} | _dependents(node))


def reconcile(connection: redis.Redis, engine: Engine | None = None) -> list[str]:
    """Make the database agree with RQ: dead workers' jobs failed, lost jobs failed, dependents cancelled."""
    for name in QUEUE_NAMES:  # RQ only notices abandoned jobs here (workers do it every 10 min by default)
        StartedJobRegistry(name, connection=connection, serializer=SERIALIZER).cleanup()
    changes: list[str] = []
    engine = engine or write_engine()
    with write_session(engine) as session:
        active = session.scalars(
            select(StageRun).where(StageRun.status.in_([StageStatus.queued.value, StageStatus.running.value]))
        ).all()
        for stage_run in active:
            job = fetch_job(stage_run.rq_job_id, connection) if stage_run.rq_job_id else None
            status = job.get_status(refresh=True) if job is not None else None
            reason = None
            if job is None:
                reason = "its RQ job is gone from Redis (expired, deleted, or Redis lost its data)"
            elif status in (JobStatus.FAILED, JobStatus.STOPPED):
                if stage_run.status == StageStatus.running or status == JobStatus.STOPPED:
                    exc = (job.latest_result().exc_string if job.latest_result() else None) or status.value
                    reason = f"job {status.value}: {exc.strip().splitlines()[-1][:500]}"
                elif stage_run.status == StageStatus.queued:
                    reason = f"job {status.value} before it reported a start"
            elif status == JobStatus.STARTED and stage_run.status == StageStatus.running:
                age = _heartbeat_age(job)
                if age is not None and age > STALE_HEARTBEAT_S:
                    reason = (
                        f"worker {job.worker_name} stopped heartbeating {age:.0f}s ago (killed or preempted); "
                        "resume the run to continue from the last checkpoint"
                    )
                    _abandon(job, reason, connection)
            elif status == JobStatus.CANCELED:
                stage_run.status = StageStatus.cancelled.value
                changes.append(f"{stage_run.run_id}/{stage_run.node}: cancelled")
            if reason:
                stage_run.status = StageStatus.failed.value
                stage_run.error = reason
                stage_run.finished_at = utcnow()
                changes.append(f"{stage_run.run_id}/{stage_run.node}: failed ({reason})")
        session.flush()
        # dependents of failed / cancelled stages never run: cancel them instead of leaving them deferred
        stuck = session.scalars(
            select(StageRun).where(StageRun.status.in_([StageStatus.failed.value, StageStatus.cancelled.value]))
        ).all()
        for stage_run in stuck:
            downstream = _dependents(stage_run.node)
            for other in stage_run.run.stages:
                if other.node in downstream and other.status == StageStatus.queued:
                    job = fetch_job(other.rq_job_id, connection) if other.rq_job_id else None
                    if job is not None and job.get_status(refresh=True) in (JobStatus.DEFERRED, JobStatus.QUEUED):
                        job.cancel()
                    other.status = StageStatus.cancelled.value
                    other.error = f"not run: upstream {stage_run.node} {stage_run.status}"
                    other.finished_at = utcnow()
                    changes.append(f"{other.run_id}/{other.node}: cancelled (upstream {stage_run.node})")
        from workers.recorder import refresh_run_status

        for run_id in {s.run_id for s in active} | {s.run_id for s in stuck}:
            refresh_run_status(session, session.get(Run, run_id))
    for change in changes:
        log.info("reconcile: %s", change)
    return changes


def run_summary(run_id: int, engine: Engine | None = None) -> dict[str, Any]:
    from db.session import read_session

    with read_session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        return {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "error": run.error,
            "stages": [
                {
                    "node": s.node,
                    "status": s.status,
                    "attempt": s.attempt,
                    "error": s.error,
                    "progress": f"{s.progress_done}/{s.progress_total}",
                }
                for s in run.stages
            ],
        }


def annotate(run_id: int, tags: list[str], notes: str, engine: Engine | None = None) -> None:
    """Edit a run's tags and notes (the dashboard's editable fields)."""
    with write_session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        run.tags = sorted({t.strip() for t in tags if t.strip()})
        run.notes = notes


def record_judgement(
    run_id: int,
    prompt_id: str,
    shown_left: str,
    shown_right: str,
    winner: str,
    reviewer: str = "",
    engine: Engine | None = None,
) -> int:
    """Store one blind A/B judgement with the positions the methods were shown in; `winner` is a method or tie."""
    from db.models import Judgement

    if winner not in (shown_left, shown_right, "tie"):
        raise ValueError(f"winner must be {shown_left!r}, {shown_right!r} or 'tie', got {winner!r}")
    with write_session(engine) as session:
        judgement = Judgement(
            run_id=run_id,
            prompt_id=prompt_id,
            method_a=shown_left,
            method_b=shown_right,
            winner=winner,
            reviewer=reviewer,
        )
        session.add(judgement)
        session.flush()
        return judgement.id
