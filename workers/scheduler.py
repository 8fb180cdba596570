"""Enqueueing: plans a RunSpec into RQ jobs (submit), and re-plans a run from the database (resume, retry).

The database is the authority on the DAG. RQ's `depends_on` is only the fast path: a failed, stopped or
cancelled parent leaves its dependents deferred forever and a missing parent counts as met, so the reconciler
(`workers.reconciler`) cancels dependents itself and resume re-plans from the database's stage states. Completed
stages come back from the artifact store at once when re-enqueued (the job finds them complete: status `cached`).

Every change is committed before anything is enqueued: a job's first event never reaches the recorder before
the rows it updates are visible. A job's id is fixed by (run, node, attempt), so the rows name it before it exists;
should enqueueing fail, the reconciler finds the job missing and marks the stage failed, and resume re-plans it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Retry
from rq.job import JobStatus
from sqlalchemy import Engine

from db.models import Preview, Run, StageRun, StageStatus, utcnow
from db.session import write_session
from pipeline.core.configs import RunSpec, canonical_json, load_stored_spec, preflight_spec, to_dict, with_seed
from pipeline.core.errors import ConfigError
from pipeline.core.registry import Node, dependents, plan, selected_nodes
from pipeline.paths import allowed_roots, confine_spec
from pipeline.validation import check_instructions_before_queueing
from workers.commands import get_run, get_stage_run
from workers.events import cancel_key
from workers.queues import fetch_job, queue
from workers.reconciler import reconcile

JOB_FUNCTION = "workers.jobs.run_stage_job"
RESULT_TTL_S = 7 * 24 * 3600


def spec_hash(spec: RunSpec) -> str:
    return hashlib.sha256(canonical_json(to_dict(spec)).encode()).hexdigest()


def _job_id(run_id: int, node: str, attempt: int) -> str:
    return f"alignlab-{run_id}-{node}-{attempt}"


@dataclass(frozen=True)
class PlannedJob:
    """One job to enqueue, as the committed rows name it."""

    run_id: int
    stage_run_id: int
    node: Node
    queue: str
    job_id: str


def _name_jobs(run: Run, stage_runs: dict[str, StageRun], to_run: list[Node]) -> list[PlannedJob]:
    """Give each stage run to (re)run the id of its next job, in the open transaction."""
    planned = []
    for node in to_run:
        stage_run = stage_runs[node.name]
        stage_run.rq_job_id = _job_id(run.id, node.name, stage_run.attempt)
        stage_run.queued_at = utcnow()
        planned.append(PlannedJob(run.id, stage_run.id, node, stage_run.queue, stage_run.rq_job_id))
    return planned


def _enqueue(
    connection: redis.Redis,
    spec: RunSpec,
    planned: list[PlannedJob],
    running_jobs: dict[str, str | None] | None = None,
) -> None:
    """Enqueue `planned` (in DAG order, after their rows are committed) with depends_on on the ones enqueued in the
    same call and on the jobs of `running_jobs` (node -> RQ job id) that are still at work."""
    enqueued: dict[str, str | None] = dict(running_jobs or {})
    arguments = to_dict(spec)
    for job in planned:
        depends = [enqueued[dep] for _, dep in job.node.deps if enqueued.get(dep)]
        queue(job.queue, connection).enqueue_call(
            JOB_FUNCTION,
            args=(job.run_id, job.stage_run_id, job.node.name, arguments),
            timeout=spec.execution.timeout_for(job.node.stage),
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
            job_id=job.job_id,
            depends_on=depends or None,
            retry=Retry(max=spec.execution.retries) if spec.execution.retries else None,
            meta={"run_id": job.run_id, "stage_run_id": job.stage_run_id, "node": job.node.name},
        )
        enqueued[job.node.name] = job.job_id


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
    check_instructions_before_queueing(spec.data.instructions, spec.data.instruction_field, spec.validation)
    nodes = selected_nodes(spec.stages)
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
        planned = _name_jobs(run, stage_runs, nodes)
        run_id = run.id
    _enqueue(connection, spec, planned)  # committed first
    return run_id


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


def nodes_to_rerun(statuses: dict[str, str], among: set[str] | None = None) -> list[str]:
    """What a resume (`among` None) or a retry (`among` = the stage and its dependents) re-enqueues, in DAG order:
    the run's stages that are neither complete nor running. The Runs page says this before the button is pressed."""
    return [
        node.name
        for node in plan()
        if node.name in statuses
        and not StageStatus(statuses[node.name]).done
        and statuses[node.name] != StageStatus.running
        and (among is None or node.name in among)
    ]


def _replan(run_id: int, connection: redis.Redis, engine: Engine | None, nodes_to_run: set[str] | None) -> Replanned:
    connection.delete(cancel_key(run_id))
    with write_session(engine) as session:
        run = get_run(session, run_id)
        spec = load_stored_spec(run.spec)  # its recorded values, migrated; never today's defaults
        by_node = {s.node: s for s in run.stages}
        running = [n for n, s in by_node.items() if s.status == StageStatus.running]
        rerun = set(nodes_to_rerun({n: s.status for n, s in by_node.items()}, nodes_to_run))
        wanted = [node for node in plan() if node.name in rerun]
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
        planned = _name_jobs(run, by_node, wanted)
        running_jobs = {n: by_node[n].rq_job_id for n in running}
    # committed first; a re-enqueued stage that needs a still-running one waits on that stage's job
    _enqueue(connection, spec, planned, running_jobs)
    return Replanned([job.node.name for job in planned], running)


def resume(run_id: int, connection: redis.Redis, engine: Engine | None = None) -> Replanned:
    """Re-enqueue every stage that is neither complete nor running; training resumes from its last checkpoint."""
    reconcile(connection, engine)
    return _replan(run_id, connection, engine, None)


def retry(stage_run_id: int, connection: redis.Redis, engine: Engine | None = None) -> Replanned:
    """Re-enqueue one stage and its unfinished dependents."""
    with write_session(engine) as session:
        stage_run = get_stage_run(session, stage_run_id)
        run_id, node = stage_run.run_id, stage_run.node
    return _replan(run_id, connection, engine, {node} | dependents(node))
