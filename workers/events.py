"""Events: small JSON messages from jobs to the recorder, through one Redis stream.

Everything the dashboard shows travels this way (a RunPod worker's disk is invisible to it). Each event has
a producer-made `event_id` (execution id + sequence number) so a redelivered or re-sent event is recorded once.
"""

from __future__ import annotations

import json
import logging
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
        fields = {"event": json.dumps(event, default=str)}
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


def decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    return json.loads(fields[b"event"])
