"""A run's status, derived from its stages' statuses (the recorder and the reconciler both apply it)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Run, RunStatus, StageStatus, utcnow


def refresh_run_status(session: Session, run: Run) -> None:
    """The run's status from its stages: running > failed > cancelled > succeeded > queued."""
    statuses = {s.status for s in run.stages}
    if StageStatus.running in statuses:
        status = "running"
    elif statuses and all(StageStatus(s).done for s in statuses):
        status = "succeeded"
    elif StageStatus.failed in statuses and StageStatus.queued not in statuses:
        status = "failed"
    elif StageStatus.cancelled in statuses and StageStatus.queued not in statuses:
        status = "cancelled"
    elif any(StageStatus(s).done for s in statuses) or StageStatus.failed in statuses:
        status = "running"
    else:
        status = "queued"
    if status != run.status:
        run.status = status
        if status == "running" and run.started_at is None:
            run.started_at = utcnow()
        if RunStatus(status).final:
            run.finished_at = utcnow()
            failed = [s for s in run.stages if s.status == StageStatus.failed]
            run.error = f"{failed[0].node}: {failed[0].error}" if failed else None
