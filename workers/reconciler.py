"""The reconciler: makes the database agree with RQ (run by the recorder on a short timer, and before a resume).

It runs RQ's registry cleanup itself (so a dead worker's job is noticed in about a minute), marks a StageRun that
is `running` or `queued` while its job failed, stopped or vanished as `failed` with the reason, and cancels the
dependents of failed or cancelled stages instead of leaving them deferred forever.
"""

from __future__ import annotations

import logging

import redis
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import Engine, select

from db.models import Run, StageRun, StageStatus, utcnow
from db.session import write_engine, write_session
from pipeline.core.configs import QUEUE_NAMES
from pipeline.core.registry import dependents
from workers.queues import fetch_job, registry
from workers.run_status import refresh_run_status

log = logging.getLogger("alignlab.reconciler")
STALE_HEARTBEAT_S = 30  # 3 x the worker's job monitoring interval: the worker (or its pod) is gone
ENQUEUE_GRACE_S = 60  # a queued stage's job is enqueued right after its rows commit: not "lost" before this


def _abandon(job, reason: str, connection: redis.Redis) -> None:
    """Tell RQ a started job is dead now (its registry cleanup would take minutes), without retrying it."""
    registry(StartedJobRegistry, job.origin, connection).remove_executions(job)
    job.set_status(JobStatus.FAILED)
    registry(FailedJobRegistry, job.origin, connection).add(job, exc_string=reason)


def _heartbeat_age(job) -> float | None:
    from datetime import UTC, datetime

    job.refresh()
    if job.last_heartbeat is None:
        return None
    beat = job.last_heartbeat if job.last_heartbeat.tzinfo else job.last_heartbeat.replace(tzinfo=UTC)
    return (datetime.now(UTC) - beat).total_seconds()


def _lost_or_dead(stage_run: StageRun, connection: redis.Redis) -> str | None:
    """Why a queued or running stage will never report again (its job lost, failed or its worker dead), or None."""
    job = fetch_job(stage_run.rq_job_id, connection) if stage_run.rq_job_id else None
    if job is None:
        queued = stage_run.queued_at or stage_run.created_at
        if stage_run.status == StageStatus.queued and (utcnow() - queued).total_seconds() < ENQUEUE_GRACE_S:
            return None  # its rows were committed first: the job is being enqueued right now
        return "its RQ job is gone from Redis (expired, deleted, or Redis lost its data)"
    status = job.get_status(refresh=True)
    if status in (JobStatus.FAILED, JobStatus.STOPPED):
        if stage_run.status == StageStatus.running or status == JobStatus.STOPPED:
            exc = (job.latest_result().exc_string if job.latest_result() else None) or status.value
            return f"job {status.value}: {exc.strip().splitlines()[-1][:500]}"
        return f"job {status.value} before it reported a start"
    if status == JobStatus.STARTED and stage_run.status == StageStatus.running:
        age = _heartbeat_age(job)
        if age is not None and age > STALE_HEARTBEAT_S:
            reason = (
                f"worker {job.worker_name} stopped heartbeating {age:.0f}s ago (killed or preempted); "
                "resume the run to continue from the last checkpoint"
            )
            _abandon(job, reason, connection)
            return reason
    return None


def _job_cancelled(stage_run: StageRun, connection: redis.Redis) -> bool:
    job = fetch_job(stage_run.rq_job_id, connection) if stage_run.rq_job_id else None
    return job is not None and job.get_status(refresh=True) == JobStatus.CANCELED


def _cancel_dependents(stage_run: StageRun, connection: redis.Redis) -> list[str]:
    """Dependents of a failed or cancelled stage never run: cancel them instead of leaving them deferred."""
    changes = []
    downstream = dependents(stage_run.node)
    for other in stage_run.run.stages:
        if other.node in downstream and other.status == StageStatus.queued:
            job = fetch_job(other.rq_job_id, connection) if other.rq_job_id else None
            if job is not None and job.get_status(refresh=True) in (JobStatus.DEFERRED, JobStatus.QUEUED):
                job.cancel()
            other.status = StageStatus.cancelled.value
            other.error = f"not run: upstream {stage_run.node} {stage_run.status}"
            other.finished_at = utcnow()
            changes.append(f"{other.run_id}/{other.node}: cancelled (upstream {stage_run.node})")
    return changes


def reconcile(connection: redis.Redis, engine: Engine | None = None) -> list[str]:
    """Make the database agree with RQ: dead workers' jobs failed, lost jobs failed, dependents cancelled."""
    for name in QUEUE_NAMES:  # RQ only notices abandoned jobs here (workers do it every 10 min by default)
        registry(StartedJobRegistry, name, connection).cleanup()
    changes: list[str] = []
    with write_session(engine or write_engine()) as session:
        active = session.scalars(
            select(StageRun).where(StageRun.status.in_([StageStatus.queued.value, StageStatus.running.value]))
        ).all()
        for stage_run in active:
            reason = _lost_or_dead(stage_run, connection)
            if reason:
                stage_run.status, stage_run.error, stage_run.finished_at = StageStatus.failed.value, reason, utcnow()
                changes.append(f"{stage_run.run_id}/{stage_run.node}: failed ({reason})")
            elif _job_cancelled(stage_run, connection):
                stage_run.status = StageStatus.cancelled.value
                changes.append(f"{stage_run.run_id}/{stage_run.node}: cancelled")
        session.flush()
        stuck = session.scalars(
            select(StageRun).where(StageRun.status.in_([StageStatus.failed.value, StageStatus.cancelled.value]))
        ).all()
        for stage_run in stuck:
            changes += _cancel_dependents(stage_run, connection)
        for run_id in {s.run_id for s in active} | {s.run_id for s in stuck}:
            refresh_run_status(session, session.get(Run, run_id))
    for change in changes:
        log.info("reconcile: %s", change)
    return changes
