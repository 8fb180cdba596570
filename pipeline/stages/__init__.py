"""Pipeline stages: plain functions `run(spec, inputs, out_dir, on_progress, ...) -> StageResult`.

A stage reads its inputs (directories of upstream artifacts), validates them before it starts, writes its
outputs into `out_dir`, reports progress through `on_progress(event_dict)` and returns a `StageResult`.
`pipeline.dag` computes artifact keys and runs stages through the artifact store; so do the CLI and the jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ProgressFn = Callable[[dict[str, Any]], None]
PREVIEW_ROWS = 200  # bounded previews travel to the dashboard through events
RESULT_FILE = "result.json"  # the StageResult, saved in its artifact directory


def no_progress(event: dict[str, Any]) -> None:
    """The default `on_progress`: drop events."""


@dataclass
class StageResult:
    stage: str
    role: str | None = None  # "sft" / "base" for train_dpo's init, the method for evaluate
    key: str | None = None
    out_dir: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # name -> file name inside out_dir
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)  # name -> {"passed": bool, "detail": ...}
    reports: list[dict[str, Any]] = field(default_factory=list)  # ValidationReport dicts
    # bounded previews of the data this stage made, by kind; `metrics[kind]`, where present, counts the whole file
    previews: dict[str, list[Any]] = field(default_factory=dict)
    load_info: dict[str, Any] | None = None
    seconds: float = 0.0
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(**data)


class Progress:
    """Small helper over `on_progress`: typed events with the stage name filled in."""

    def __init__(self, stage: str, on_progress: ProgressFn | None, role: str | None = None):
        self.stage, self.role = stage, role
        self.callback = on_progress or no_progress
        self.started = time.perf_counter()

    def emit(self, kind: str, **data: Any) -> None:
        self.callback({"kind": kind, "stage": self.stage, "role": self.role, **data})

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.emit("progress", done=done, total=total, message=message)

    def log(self, message: str) -> None:
        self.emit("log", message=message)

    def metric(self, step: int, values: dict[str, Any]) -> None:
        self.emit("metric", step=step, values=values)

    def check_stop(self) -> None:
        """Nothing to report, but a point where the stage may be stopped: the job's `on_progress` raises
        `StopRequested` (preemption) or its cancel here, as after any event (a training stage calls it after every
        micro-batch, so a stop never waits for a whole gradient-accumulation step)."""
        self.emit("tick")

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
