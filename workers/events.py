"""Events: small JSON messages from jobs to the recorder, through one Redis stream.

Everything the dashboard shows travels this way (a RunPod worker's disk is invisible to it). Each event has
a producer-made `event_id` (execution id + sequence number) so a redelivered or re-sent event is recorded once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

STREAM = "alignlab:events"
STREAM_MAXLEN = 2_000_000  # far above any backlog: trimming ignores consumer groups
CHUNK_ROWS = 50  # rows per samples/preview event, to keep each event small


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
        self.connection.xadd(STREAM, {"event": json.dumps(event, default=str)}, maxlen=STREAM_MAXLEN)
        return event["event_id"]

    def emit_rows(self, kind: EventKind, rows: list[Any], **payload: Any) -> None:
        for start in range(0, len(rows), CHUNK_ROWS):
            self.emit(kind, rows=rows[start : start + CHUNK_ROWS], **payload)


def decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    return json.loads(fields[b"event"])
