"""Events: small JSON messages from jobs to the recorder, through one Redis stream.

Everything the dashboard shows travels this way (a RunPod worker's disk is invisible to it). Each event has
a producer-made `event_id` (execution id + sequence number) so a redelivered or re-sent event is recorded once.
Each kind has one payload schema (`PAYLOADS`), checked when the event is emitted and again when it is recorded.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

STREAM = "alignlab:events"
STREAM_MAXLEN = 2_000_000  # far above any backlog: trimming ignores consumer groups
CHUNK_ROWS = 50  # rows per samples/preview event, to keep each event small
OUTAGE_TOLERANCE_S = 300.0  # how long a job waits for an unreachable Redis before it gives up
log = logging.getLogger("alignlab.events")


class EventKind(StrEnum):
    started = "started"
    progress = "progress"
    log = "log"
    metric = "metric"
    resumed = "resumed"  # training restarted from a checkpoint: later steps are logged again
    validation = "validation"
    preview = "preview"
    samples = "samples"
    evaluation = "evaluation"
    verdicts = "verdicts"  # the judge stage's judged items
    judge_figures = "judge_figures"  # the judge stage's figures per comparison
    finished = "finished"
    failed = "failed"
    preempted = "preempted"  # stopped by a worker shutdown, checkpoint saved, job requeued


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Started(Payload):
    job_id: str
    worker: str | None = None


class ProgressPayload(Payload):
    done: int
    total: int
    message: str = ""


class Log(Payload):
    message: str


class MetricPayload(Payload):
    step: int
    values: dict[str, float | str]  # a number, or "nan" / "inf" / "-inf" (strict JSON has no NaN)

    @field_validator("values")
    @classmethod
    def _numbers(cls, values: dict[str, float | str]) -> dict[str, float | str]:
        for name, value in values.items():
            if isinstance(value, str) and value not in NON_FINITE:
                raise ValueError(f"metric {name!r}: {value!r} is not a number")
        return values


class Resumed(Payload):
    step: int


class ValidationPayload(Payload):
    report: dict[str, Any]


class PreviewPayload(Payload):
    preview: str
    rows: list[Any]


class SamplesPayload(Payload):
    method: str
    rows: list[dict[str, Any]]


class EvaluationPayload(Payload):
    rows: list[dict[str, Any]]


class VerdictsPayload(Payload):
    rows: list[dict[str, Any]]


class JudgeFiguresPayload(Payload):
    rows: list[dict[str, Any]]


class Finished(Payload):
    status: Literal["succeeded", "cached"]
    artifact_key: str | None = None
    location: str | None = None
    metrics: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    load_info: dict[str, Any] | None = None
    seconds: float | None = None


class Failed(Payload):
    error: str
    error_type: str = ""
    cancelled: bool = False


class Preempted(Payload):
    reason: str


# one schema per kind: what `emit` checks and `decode` checks again
PAYLOADS: dict[EventKind, type[Payload]] = {
    EventKind.started: Started,
    EventKind.progress: ProgressPayload,
    EventKind.log: Log,
    EventKind.metric: MetricPayload,
    EventKind.resumed: Resumed,
    EventKind.validation: ValidationPayload,
    EventKind.preview: PreviewPayload,
    EventKind.samples: SamplesPayload,
    EventKind.evaluation: EvaluationPayload,
    EventKind.verdicts: VerdictsPayload,
    EventKind.judge_figures: JudgeFiguresPayload,
    EventKind.finished: Finished,
    EventKind.failed: Failed,
    EventKind.preempted: Preempted,
}
assert set(PAYLOADS) == set(EventKind), "every event kind needs its payload schema"


class InvalidEvent(ValueError):
    """A stream entry that is no valid event; `event` is its envelope when that much could be read."""

    def __init__(self, message: str, event: dict[str, Any] | None = None):
        super().__init__(message)
        self.event = event


def check_payload(kind: str, payload: dict[str, Any]) -> None:
    """Raise ValueError naming the field when `payload` does not fit its kind's schema."""
    try:
        PAYLOADS[EventKind(kind)].model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValueError(f"{kind} event: {problems}") from None


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float spelled as "nan", "inf" or "-inf": events are strict JSON, which every
    database's JSON column accepts (PostgreSQL refuses a bare NaN) and the recorder turns back into a flag."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def cancel_key(run_id: int) -> str:
    return f"alignlab:cancel:{run_id}"


def preempt_key(worker_name: str) -> str:
    """Set by a worker that got SIGTERM (spot preemption): its running job checkpoints and is requeued."""
    return f"alignlab:preempt:{worker_name}"


@dataclass
class EventEmitter:
    """Emits one job execution's events with ids `<execution>:<seq>`."""

    connection: redis.Redis
    run_id: int
    stage_run_id: int
    execution: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    seq: int = 0
    outage_s: float = OUTAGE_TOLERANCE_S

    def emit(self, kind: EventKind | str, **payload: Any) -> str:
        payload = strict_json(payload)
        check_payload(str(kind), payload)
        self.seq += 1
        event = {
            "event_id": f"{self.execution}:{self.seq}",
            "kind": str(kind),
            "run_id": self.run_id,
            "stage_run_id": self.stage_run_id,
            "time": time.time(),
            "payload": payload,
        }
        fields = {"event": json.dumps(event, default=str, allow_nan=False)}
        deadline = time.monotonic() + self.outage_s
        delay = 0.5
        while True:
            try:
                self.connection.xadd(STREAM, fields, maxlen=STREAM_MAXLEN)
                return event["event_id"]
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis unreachable (a pod's link dropped, Redis restarting): the job keeps its work and waits;
                # a retried XADD that had landed is harmless, the recorder keeps one row per event id
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis unreachable; event %s waits %.1fs", event["event_id"], delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def emit_rows(self, kind: EventKind, rows: list[Any], **payload: Any) -> None:
        for start in range(0, len(rows), CHUNK_ROWS):
            self.emit(kind, rows=rows[start : start + CHUNK_ROWS], **payload)


ENVELOPE = {"event_id": str, "kind": str, "run_id": int, "stage_run_id": int, "payload": dict}


def decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One stream entry as an event; `InvalidEvent` naming what is wrong when it is not one (carrying the envelope
    when that much is valid, so the dead letter names the event and its run)."""
    if b"event" not in fields:
        raise InvalidEvent(f"stream entry without an 'event' field (fields: {sorted(k.decode() for k in fields)})")
    try:
        event = json.loads(fields[b"event"])
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"malformed event: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidEvent(f"event is a {type(event).__name__}, not an object")
    for name, kind in ENVELOPE.items():
        if not isinstance(event.get(name), kind) or isinstance(event.get(name), bool):
            raise InvalidEvent(f"event field {name!r} is {event.get(name)!r}, not a {kind.__name__}")
    if event["kind"] not in EventKind.__members__:
        raise InvalidEvent(f"unknown event kind {event['kind']!r}")
    try:
        check_payload(event["kind"], event["payload"])
    except ValueError as exc:
        raise InvalidEvent(str(exc), event) from None
    return event
