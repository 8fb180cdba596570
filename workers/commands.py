"""The dashboard's and the CLI's commands on existing runs: cancel, tags and notes, judgements, a run's summary.

Each is one short transaction. A command naming a run that does not exist raises `NotFoundError`; one that cannot
be carried out as asked raises `CommandError` (both `AlignlabError`s: callers show the message).
"""

from __future__ import annotations

from typing import Any

import redis
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.job import JobStatus
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from db.models import Judgement, Run, Sample, StageRun, StageStatus, judged_pair, utcnow
from db.session import read_session, write_session
from pipeline.core.errors import CommandError, NotFoundError
from pipeline.core.text import same_text
from workers.events import cancel_key
from workers.queues import SERIALIZER, fetch_job


def get_run(session: Any, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id}")
    return run


def get_stage_run(session: Any, stage_run_id: int) -> StageRun:
    stage_run = session.get(StageRun, stage_run_id)
    if stage_run is None:
        raise NotFoundError(f"no stage run {stage_run_id}")
    return stage_run


def cancel(run_id: int, connection: redis.Redis, engine: Engine | None = None) -> None:
    """Cancel queued jobs, stop the running one, mark every unfinished stage cancelled."""
    connection.set(cancel_key(run_id), "1", ex=24 * 3600)  # cooperative: the job raises at its next progress
    with write_session(engine) as session:
        run = get_run(session, run_id)
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


def run_summary(run_id: int, engine: Engine | None = None) -> dict[str, Any]:
    with read_session(engine) as session:
        run = get_run(session, run_id)
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
                    "seconds": (s.finished_at - s.started_at).total_seconds()
                    if s.started_at and s.finished_at
                    else None,
                }
                for s in run.stages
            ],
        }


def annotate(run_id: int, tags: list[str], notes: str, engine: Engine | None = None) -> None:
    """Edit a run's tags and notes (the dashboard's editable fields)."""
    with write_session(engine) as session:
        run = get_run(session, run_id)
        run.tags = sorted({t.strip() for t in tags if t.strip()})
        run.notes = notes


def record_judgement(
    run_id: int,
    prompt_id: str,
    shown_left: str,
    shown_right: str,
    winner: str,
    reviewer: str,
    engine: Engine | None = None,
) -> int:
    """Store one blind A/B judgement with the positions the methods were shown in; `winner` is a method or tie.

    Refused with a `CommandError`: no reviewer name; an item whose two outputs are the same text (a "preference"
    between them would count in the win rate); a second judgement of the same item by the same reviewer."""
    reviewer = reviewer.strip()
    if not reviewer:
        raise CommandError("a judgement needs the reviewer's name")
    if winner not in (shown_left, shown_right, "tie"):
        raise CommandError(f"winner must be {shown_left!r}, {shown_right!r} or 'tie', got {winner!r}")
    pair = judged_pair(shown_left, shown_right)
    with write_session(engine) as session:
        get_run(session, run_id)
        outputs = dict(
            session.execute(
                select(Sample.method, Sample.generation).where(
                    Sample.run_id == run_id, Sample.prompt_id == prompt_id, Sample.method.in_((shown_left, shown_right))
                )
            ).all()
        )
        if set(outputs) != {shown_left, shown_right}:
            raise CommandError(f"run {run_id} has no outputs of both {shown_left} and {shown_right} for {prompt_id}")
        if same_text(outputs[shown_left], outputs[shown_right]):
            raise CommandError(f"prompt {prompt_id}: {shown_left} and {shown_right} wrote the same text")
        judgement = Judgement(
            run_id=run_id,
            prompt_id=prompt_id,
            method_a=shown_left,
            method_b=shown_right,
            pair=pair,
            winner=winner,
            reviewer=reviewer,
        )
        session.add(judgement)
        try:
            session.flush()
        except IntegrityError:  # uq_judgement_per_reviewer: one judgement per reviewer, item and pair
            raise CommandError(
                f"{reviewer} has already judged prompt {prompt_id} for {pair.replace('|', ' vs ')}"
            ) from None
        return judgement.id
