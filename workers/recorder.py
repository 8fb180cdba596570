"""The recorder: events from the Redis stream into the database, idempotently, plus the reconciler.

It reads with a consumer group (its own pending entries first, then new ones), applies a batch in one
transaction — skipping event ids already recorded — commits, and only then acks. Entries left pending by a
dead recorder are claimed. On a short timer it reconciles the database with RQ: it runs RQ's registry
cleanup itself (so a dead worker's job is noticed in about a minute), marks a StageRun that is `running`
or `queued` while its job failed, stopped or vanished as `failed` with the reason, and cancels the
dependents of failed or cancelled stages instead of leaving them deferred forever.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from db.models import (
    Artifact,
    DeadEvent,
    Evaluation,
    JudgeFigure,
    JudgeVerdict,
    Metric,
    Preview,
    RecordedEvent,
    Run,
    Sample,
    StageRun,
    StageStatus,
    ValidationReportRow,
    utcnow,
)
from db.session import write_engine, write_session
from workers import events as ev
from workers.run_status import refresh_run_status

log = logging.getLogger("alignlab.recorder")
GROUP = "recorder"
LOG_TAIL_CHARS = 8000
CLAIM_IDLE_MS = 60_000
# the database is away or busy (locked, connection lost): not the event's fault, so read the batch again later
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


def _new_event_ids(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Record a batch's event ids in one statement; returns the ids not recorded before (the ones to apply)."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(RecordedEvent).on_conflict_do_nothing().returning(RecordedEvent.event_id)
    return set(session.scalars(statement, rows).all())


def _metric_value(name: str, value: Any) -> tuple[float | None, str | None]:
    """(value, non_finite flag) of one metric value: a number, or "nan" / "inf" / "-inf" as events spell them."""
    if isinstance(value, str) and value in ev.NON_FINITE:
        return None, value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {name!r}: {value!r} is not a number")
    if not math.isfinite(value):  # an event written by an older emitter, bare NaN/Infinity in its JSON
        return None, "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return float(value), None


def metric_rows(run_id: int, stage_run_id: int, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The Metric rows of one metric event: a point per named value, non-finite values flagged."""
    rows = []
    for name, raw in payload["values"].items():
        value, non_finite = _metric_value(name, raw)
        rows.append(
            {
                "run_id": run_id,
                "stage_run_id": stage_run_id,
                "step": int(payload["step"]),
                "name": name,
                "value": value,
                "non_finite": non_finite,
            }
        )
    return rows


def _append_log(stage_run: StageRun, line: str) -> None:
    stage_run.log_tail = ((stage_run.log_tail or "") + line + "\n")[-LOG_TAIL_CHARS:]


def _started(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    if stage_run.status != StageStatus.cancelled:
        stage_run.status = StageStatus.running.value
    stage_run.started_at = when
    stage_run.worker = payload.get("worker")
    stage_run.error = None


def _progress(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    stage_run.progress_done, stage_run.progress_total = payload["done"], payload["total"]
    stage_run.progress_message = (payload.get("message") or "")[:500]


def _log(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    _append_log(stage_run, payload["message"])


def _resumed(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    """An attempt (re)starts after `step`: what it redoes replaces the old points."""
    session.execute(delete(Metric).where(Metric.stage_run_id == stage_run.id, Metric.step > payload["step"]))
    _append_log(stage_run, f"training from step {payload['step']}" + (" (resumed)" if payload["step"] else ""))


def _validation(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    report = payload["report"]
    session.add(
        ValidationReportRow(
            run_id=stage_run.run_id,
            stage_run_id=stage_run.id,
            kind=report["kind"],
            source=report["source"][:1000],
            passed=report["passed"],
            rows_read=report["rows_read"],
            rows_valid=report["rows_valid"],
            n_errors=report["n_errors"],
            n_warnings=report["n_warnings"],
            report=report,
        )
    )


def _preview(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    session.add(
        Preview(run_id=stage_run.run_id, stage_run_id=stage_run.id, kind=payload["preview"], rows=payload["rows"])
    )


def _samples(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    session.add_all(
        Sample(
            run_id=stage_run.run_id,
            stage_run_id=stage_run.id,
            method=payload["method"],
            prompt_id=row["prompt_id"],
            prompt=row["prompt"],
            reference=row.get("reference"),
            generation=row["generation"],
            stats=row["stats"],
        )
        for row in payload["rows"]
    )


def _evaluation(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    session.add_all(Evaluation(run_id=stage_run.run_id, stage_run_id=stage_run.id, **row) for row in payload["rows"])


def _verdicts(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    session.add_all(JudgeVerdict(run_id=stage_run.run_id, stage_run_id=stage_run.id, **row) for row in payload["rows"])


def _judge_figures(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    session.add_all(JudgeFigure(run_id=stage_run.run_id, stage_run_id=stage_run.id, **row) for row in payload["rows"])


def _charge(stage_run: StageRun, when: datetime) -> None:
    """Add the attempt that ends now to the stage run's ledger: its wall time, and its cost at the price its queue
    has now (`ALIGNLAB_HOME/prices.yaml`). Attempts add up; a queue without a price leaves the cost unknown (None)
    rather than counting it as free."""
    if stage_run.started_at is None:
        return
    from pipeline.core.errors import ConfigError
    from pipeline.core.prices import load_prices

    seconds = max(0.0, (when - stage_run.started_at).total_seconds())
    first = stage_run.charged_seconds is None
    stage_run.charged_seconds = (stage_run.charged_seconds or 0.0) + seconds
    try:
        cost = load_prices().cost(seconds, stage_run.queue)
    except ConfigError as exc:  # a broken price file: the run is recorded, the cost is not guessed
        log.warning("no cost for stage run %s: %s", stage_run.id, exc)
        cost = None
    every_attempt_priced = first or stage_run.cost is not None
    stage_run.cost = (stage_run.cost or 0.0) + cost if cost is not None and every_attempt_priced else None


def _finished(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    _charge(stage_run, when)
    if stage_run.status != StageStatus.cancelled:
        stage_run.status = payload["status"]
    stage_run.finished_at = when
    stage_run.artifact_key = payload.get("artifact_key")
    stage_run.metrics, stage_run.checks = payload.get("metrics"), payload.get("checks")
    info = payload.get("load_info") or {}
    stage_run.load_info = info or None
    stage_run.peak_memory_bytes = info.get("peak_memory_bytes")
    stage_run.device = info.get("device")
    key = payload.get("artifact_key")
    if key and session.get(Artifact, key) is None:
        session.add(
            Artifact(
                key=key,
                stage=stage_run.stage,
                location=payload.get("location") or "",
                first_run_id=stage_run.run_id,
                meta={"seconds": payload.get("seconds")},
            )
        )


def _preempted(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    _charge(stage_run, when)
    if stage_run.status != StageStatus.cancelled:
        stage_run.status = StageStatus.queued.value
    _append_log(stage_run, f"preempted: {payload.get('reason')}; requeued")


def _failed(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    _charge(stage_run, when)
    cancelled = payload.get("cancelled") or stage_run.status == StageStatus.cancelled
    stage_run.status = StageStatus.cancelled.value if cancelled else StageStatus.failed.value
    stage_run.error = payload.get("error")
    stage_run.finished_at = when


def _metric(session: Session, stage_run: StageRun, payload: dict[str, Any], when: datetime) -> None:
    session.execute(insert(Metric), metric_rows(stage_run.run_id, stage_run.id, payload))


# event kind -> how it changes the database (one function per kind)
APPLY = {
    ev.EventKind.started: _started,
    ev.EventKind.progress: _progress,
    ev.EventKind.log: _log,
    ev.EventKind.metric: _metric,
    ev.EventKind.resumed: _resumed,
    ev.EventKind.validation: _validation,
    ev.EventKind.preview: _preview,
    ev.EventKind.samples: _samples,
    ev.EventKind.evaluation: _evaluation,
    ev.EventKind.verdicts: _verdicts,
    ev.EventKind.judge_figures: _judge_figures,
    ev.EventKind.finished: _finished,
    ev.EventKind.preempted: _preempted,
    ev.EventKind.failed: _failed,
}
assert set(APPLY) == set(ev.EventKind), "every event kind needs its recorder"


def apply_event(session: Session, event: dict[str, Any]) -> None:
    """Write one event's effect. Called once per event id, inside the batch's transaction."""
    stage_run = session.get(StageRun, event["stage_run_id"])
    if stage_run is None:
        log.warning("event %s for unknown stage run %s skipped", event["event_id"], event["stage_run_id"])
        return
    when = datetime.fromtimestamp(event["time"]).replace(tzinfo=None) if "time" in event else utcnow()
    APPLY[ev.EventKind(event["kind"])](session, stage_run, event["payload"], when)


class Recorder:
    def __init__(
        self,
        connection: redis.Redis,
        engine: Engine | None = None,
        consumer: str | None = None,
        batch_size: int = 1000,
        block_ms: int = 1000,
    ):
        self.connection = connection
        self.engine = engine or write_engine()
        self.consumer = consumer or f"recorder-{socket.gethostname()}"
        self.batch_size, self.block_ms = batch_size, block_ms
        self.recorded = 0
        self._pending_checked = False

    def ensure_group(self) -> None:
        try:
            self.connection.xgroup_create(ev.STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if not self._pending_checked:  # our own unacked entries from before a crash come first
            entries = self.connection.xreadgroup(GROUP, self.consumer, {ev.STREAM: "0"}, count=self.batch_size)
            pending = entries[0][1] if entries else []
            if pending:
                return pending
            self._pending_checked = True
        claimed = self.connection.xautoclaim(
            ev.STREAM, GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=self.batch_size
        )
        claimed_entries = [e for e in (claimed[1] if claimed else []) if e and e[0]]
        if claimed_entries:
            return claimed_entries
        entries = self.connection.xreadgroup(
            GROUP, self.consumer, {ev.STREAM: ">"}, count=self.batch_size, block=self.block_ms
        )
        return entries[0][1] if entries else []

    def step(self) -> int:
        """Read one batch, apply it in one transaction, commit, then ack. Returns the events applied.

        An event that cannot be written (malformed, or refused by the database) never blocks the stream: the batch
        is applied again one event at a time, and each event that fails alone is dead-lettered with the reason.
        A database that is unreachable or locked is not the event's fault: that raises, nothing is acked, and
        the batch is read again, first thing. So is whatever a Redis failure leaves pending on this consumer: a
        read whose reply was lost (Redis stalled, then answered a client that had timed out) delivered entries
        that were never applied, and an ack that was lost leaves applied ones (skipped as recorded)."""
        try:
            return self._step()
        except (redis.ConnectionError, redis.TimeoutError, *TRANSIENT_DB_ERRORS):
            self._pending_checked = False  # our own pending entries come first again, not after CLAIM_IDLE_MS
            raise

    def _step(self) -> int:
        self.ensure_group()
        entries = self._read()
        if not entries:
            return 0
        events: list[tuple[str, dict[str, Any]]] = []
        dead: list[tuple[str, dict[bytes, bytes], dict[str, Any] | None, str]] = []
        raw_by_sid: dict[str, dict[bytes, bytes]] = {}
        for stream_id, fields in entries:
            if not fields:  # a trimmed entry still in the PEL has no fields: nothing to apply
                continue
            sid = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
            raw_by_sid[sid] = fields
            try:
                events.append((sid, ev.decode(fields)))
            except ev.InvalidEvent as exc:
                dead.append((sid, fields, exc.event, f"invalid event: {exc}"[:2000]))
        try:
            applied = self._apply(events)
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - one poisoned event: find it by applying them one at a time
            applied = 0
            for sid, event in events:
                try:
                    applied += self._apply([(sid, event)])
                except TRANSIENT_DB_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001 - the reason is recorded with the event
                    dead.append((sid, raw_by_sid[sid], event, f"{type(exc).__name__}: {exc}"[:2000]))
        if dead:
            self._dead_letter(dead)
        self.connection.xack(ev.STREAM, GROUP, *[stream_id for stream_id, _ in entries])
        self.recorded += applied
        return applied

    def _apply(self, events: list[tuple[str, dict[str, Any]]]) -> int:
        """Apply `events` in one transaction, skipping event ids already recorded; returns how many were new."""
        if not events:
            return 0
        applied = 0
        with write_session(self.engine) as session:
            # dedupe within the batch too: a re-sent event may sit next to its original
            unique = {event["event_id"]: (sid, event) for sid, event in reversed(events)}
            new = _new_event_ids(
                session,
                [
                    {
                        "event_id": eid,
                        "stream_id": sid,
                        "kind": event["kind"],
                        "run_id": event.get("run_id"),
                        "received_at": utcnow(),
                    }
                    for eid, (sid, event) in unique.items()
                ],
            )
            pending_metrics: list[dict[str, Any]] = []
            touched_runs: set[int] = set()
            for _, event in events:
                if event["event_id"] not in new:
                    continue
                new.discard(event["event_id"])
                applied += 1
                if event["kind"] == ev.EventKind.metric:  # the bulk of the traffic: one INSERT per batch
                    pending_metrics.extend(metric_rows(event["run_id"], event["stage_run_id"], event["payload"]))
                    continue
                if pending_metrics:  # keep order: a `resumed` event deletes the points logged before it
                    session.execute(insert(Metric), pending_metrics)
                    pending_metrics = []
                apply_event(session, event)
                touched_runs.add(event["run_id"])
            if pending_metrics:
                session.execute(insert(Metric), pending_metrics)
            session.flush()
            for run_id in touched_runs:
                run = session.get(Run, run_id)
                if run is not None:
                    refresh_run_status(session, run)
        return applied

    def _dead_letter(self, dead: list[tuple[str, dict[bytes, bytes], dict[str, Any] | None, str]]) -> None:
        with write_session(self.engine) as session:
            for sid, fields, event, error in dead:
                log.warning("event %s dead-lettered: %s", sid, error)
                raw = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
                session.add(
                    DeadEvent(
                        stream_id=sid,
                        event_id=str(event.get("event_id"))[:200] if event else None,
                        kind=str(event.get("kind"))[:30] if event else None,
                        run_id=event.get("run_id") if event and isinstance(event.get("run_id"), int) else None,
                        error=error,
                        raw=json.dumps(raw)[:100_000],
                    )
                )
            stage_run_ids = {e["stage_run_id"] for _, _, e, _ in dead if e}
            for stage_run in session.scalars(select(StageRun).where(StageRun.id.in_(stage_run_ids))):
                reasons = [err for _, _, e, err in dead if e and e["stage_run_id"] == stage_run.id]
                _append_log(stage_run, f"{len(reasons)} event(s) not recorded: {reasons[0]}")

    def drain(self, idle_rounds: int = 1) -> int:
        """Apply everything in the stream now (tests, `alignlab status`); stops after `idle_rounds` empty reads."""
        total, idle = 0, 0
        block, self.block_ms = self.block_ms, 50
        try:
            while idle < idle_rounds:
                n = self.step()
                total += n
                idle = idle + 1 if n == 0 else 0
        finally:
            self.block_ms = block
        return total

    def run_forever(self, stop: threading.Event, reconcile_every_s: float = 15.0) -> None:
        from workers.reconciler import reconcile

        last = 0.0
        while not stop.is_set():
            try:
                self.step()
                if time.monotonic() - last > reconcile_every_s:
                    reconcile(self.connection, self.engine)
                    last = time.monotonic()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); retrying in 2 s", exc)
                stop.wait(2)
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("database unavailable (%s); retrying in 2 s", str(exc).splitlines()[0])
                stop.wait(2)


def main() -> None:
    import signal

    from workers.queues import connect

    logging.basicConfig(level=os.environ.get("ALIGNLAB_LOG_LEVEL", "INFO"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    recorder = Recorder(connect(), batch_size=int(os.environ.get("ALIGNLAB_RECORDER_BATCH", "1000")))
    log.info("recorder %s reading %s", recorder.consumer, ev.STREAM)
    recorder.run_forever(stop)


if __name__ == "__main__":
    main()
