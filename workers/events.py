"""Events: small JSON messages from jobs to the recorder, through one Redis stream.

Everything the dashboard shows travels this way (a RunPod worker's disk is invisible to it). Each event has
a producer-made `event_id` (execution id + sequence number) so a redelivered or re-sent event is recorded once.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

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
    finished = "finished"
    failed = "failed"
    preempted = "preempted"  # stopped by a worker shutdown, checkpoint saved, job requeued


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


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
        self.seq += 1
        event = {
            "event_id": f"{self.execution}:{self.seq}",
            "kind": str(kind),
            "run_id": self.run_id,
            "stage_run_id": self.stage_run_id,
            "time": time.time(),
            "payload": payload,
        }
        fields = {"event": json.dumps(strict_json(event), default=str, allow_nan=False)}
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
    """One stream entry as an event; ValueError naming what is wrong when it is not one."""
    if b"event" not in fields:
        raise ValueError(f"stream entry without an 'event' field (fields: {sorted(k.decode() for k in fields)})")
    event = json.loads(fields[b"event"])
    if not isinstance(event, dict):
        raise ValueError(f"event is a {type(event).__name__}, not an object")
    for name, kind in ENVELOPE.items():
        if not isinstance(event.get(name), kind):
            raise ValueError(f"event field {name!r} is {event.get(name)!r}, not a {kind.__name__}")
    if event["kind"] not in EventKind.__members__:
        raise ValueError(f"unknown event kind {event['kind']!r}")
    return event
