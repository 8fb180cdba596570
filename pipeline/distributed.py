"""A training stage on several devices: the stage's `fit` runs in N processes under `accelerate launch` (torchrun),
started from inside the job's own process, which stays the one that talks to the queue and the store.

The job's process (the parent) does the bookkeeping once: it picks the checkpoint to resume from, trims the step
log, writes `ranks/plan.json` and launches. Each rank runs the same `fit`; rank 0 alone writes the step log and
the artifact's extra files and reports its events into `ranks/events.jsonl`, which the parent forwards to the
job as they come, so a multi-device stage shows progress, curves and validation exactly like a one-device one.

Stopping is agreed, never one-sided: a stop request reaching the parent (preemption, `StopRequested` from the
job) is written to `ranks/stop`; a SIGTERM reaching a rank sets its own flag. At the end of every optimizer step
the ranks take the maximum of their flags (one all-reduce), so all of them save the same checkpoint and leave the
loop at the same step, and the parent raises `StopRequested` as a one-device stage would. A rank that dies makes
torchrun end the others (bounded by its grace period); the parent then fails the stage with what the launcher
said, and the next attempt resumes from the newest complete checkpoint. The launcher gets SIGTERM if the job's
process dies, and each rank gets SIGTERM if the launcher dies (Linux parent-death signal), so no rank outlives
its job.

    python -m pipeline.distributed PLAN.json    # what each rank runs; only the stages' `fit` functions
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import errors
from pipeline.core.configs import RunSpec, TrainingConfig, from_dict, to_dict
from pipeline.core.errors import ConfigError, StopRequested
from pipeline.core.registry import stage as stage_declaration
from pipeline.stages import Progress

RANKS_DIR = "ranks"
PLAN = "plan.json"
EVENTS = "events.jsonl"
STOP = "stop"
OUTCOME = "outcome.json"
LAUNCH_LOG = "launch.log"
STOP_GRACE_S = 600  # after a stop request: how long the ranks get to save their checkpoint before they are killed
TERMINATE_GRACE_S = 60  # after SIGTERM to the launcher: how long before SIGKILL
RANK_EXIT_GRACE_S = 300  # a rank told to stop by SIGTERM that has not left by then exits at once
POLL_S = 0.2  # how often the parent looks for new events while the ranks run
PR_SET_PDEATHSIG = 1


class RankFailed(Exception):
    """A rank of a multi-device stage died or failed (not a user's error: a retry or resume can succeed)."""


@dataclass(frozen=True)
class Rank:
    """Where this process sits in a multi-device launch; `current()` is None outside one."""

    index: int
    world: int
    local: int
    ranks_dir: Path

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def stop_asked(self) -> bool:
        return _SIGTERM_RECEIVED.is_set() or (self.ranks_dir / STOP).exists()


_CURRENT: Rank | None = None
_SIGTERM_RECEIVED = threading.Event()


def current() -> Rank | None:
    return _CURRENT


def is_main_process() -> bool:
    """True in a one-device stage and on rank 0 of a multi-device one: the process that writes and reports."""
    return _CURRENT is None or _CURRENT.is_main


def stop_callback(rank: Rank) -> Any:
    """A TrainerCallback that stops every rank at the same step once any of them was asked to stop: the ranks take
    the maximum of their flags after each optimizer step, then all save the checkpoint and leave the loop."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class AgreedStop(TrainerCallback):
        stop_requested = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            flag = torch.tensor([1 if rank.stop_asked() else 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                control.should_save = True
                control.should_training_stop = True
                self.stop_requested = True

    return AgreedStop()


# ---------------------------------------------------------------------------------------------- the parent side


def launch_arguments(config: TrainingConfig, cuda: bool, mixed_precision: str) -> list[str]:
    """`accelerate launch` flags for `config.devices` processes on this machine, by strategy.

    torchrun is the launcher on CPU too: accelerate's own CPU path expects mpirun; ranks started by torchrun on a
    machine without CUDA train on the gloo backend (the Trainer is given `use_cpu`)."""
    flags = [
        "--num_processes",
        str(config.devices),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",  # a free port, chosen by accelerate: two stages on one machine never collide
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
        "--monitor_interval",
        "1",
    ]
    if config.distributed == "ddp" or not cuda:
        return [*flags, "--multi_gpu"]
    if config.distributed == "fsdp":
        return [
            *flags,
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_reshard_after_forward",
            "true",
            "--fsdp_cpu_ram_efficient_loading",
            "false",
        ]
    return [
        *flags,
        "--use_deepspeed",
        "--zero_stage",
        "3",
        "--zero3_init_flag",
        "false",
        "--zero3_save_16bit_model",
        "true",
        "--gradient_accumulation_steps",
        str(config.grad_accumulation),
    ]


def check_devices(config: TrainingConfig, where: str) -> None:
    """Whether this machine can run `config.devices` processes with its strategy; a ConfigError naming the field
    before anything is loaded."""
    if config.devices == 1:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and config.devices > gpus:
        raise ConfigError(f"{where}.devices: {config.devices} asked for, this worker has {gpus} GPU(s)")
    if not gpus and config.distributed != "ddp":
        raise ConfigError(
            f"{where}.distributed: {config.distributed} shards over GPUs and this worker has none; use ddp"
        )
    if config.distributed == "deepspeed_zero3" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{where}.distributed: deepspeed_zero3 needs the deepspeed package on this worker")


def _set_parent_death_signal() -> None:
    """In a child, before exec: SIGTERM when the process that started it dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class _EventTail:
    """The complete lines rank 0 appended to the events file since the last read."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def new_events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def fit_on_devices(
    fit: Callable[..., dict[str, Any]],
    section: str,
    spec: RunSpec,
    inputs: dict[str, Path],
    out_dir: Path,
    progress: Progress,
    resume: str | None,
    **options: Any,
) -> dict[str, Any]:
    """What `fit` returns, run here on one device or on the `devices` of the spec's training `section` ("sft",
    "dpo") as ranks; `options` are JSON values."""
    config = getattr(spec, section)
    if config.devices == 1:
        return fit(spec, inputs, out_dir, progress, resume, **options)
    check_devices(config, section)
    ranks_dir = out_dir / RANKS_DIR
    ranks_dir.mkdir(parents=True, exist_ok=True)
    leftovers = [p.name for pattern in ("error-*.json", "rank-*.pid") for p in ranks_dir.glob(pattern)]
    for stale in (EVENTS, STOP, OUTCOME, LAUNCH_LOG, *leftovers):
        (ranks_dir / stale).unlink(missing_ok=True)
    plan = {
        "stage": progress.stage,
        "role": progress.role,
        "spec": to_dict(spec),
        "inputs": {name: str(path) for name, path in inputs.items()},
        "out_dir": str(out_dir),
        "resume": resume,
        "options": options,
    }
    (ranks_dir / PLAN).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    from pipeline.models import cuda_available

    cuda = cuda_available()
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(spec.base_model.dtype, "no") if cuda else "no"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_arguments(config, cuda, mixed),
        "-m",
        __name__,
        str(ranks_dir / PLAN),
    ]
    progress.log(f"training on {config.devices} {'GPUs' if cuda else 'CPU processes'} ({config.distributed})")
    with open(ranks_dir / LAUNCH_LOG, "wb") as log:
        launcher = subprocess.Popen(  # noqa: S603  (our own interpreter and module, no shell)
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_set_parent_death_signal
        )
        try:
            stop = _forward_until_exit(launcher, _EventTail(ranks_dir / EVENTS), progress, ranks_dir)
        except BaseException:
            _terminate(launcher)
            raise
    return _outcome(launcher.returncode, ranks_dir, stop, config.devices)


def _forward_until_exit(
    launcher: subprocess.Popen, tail: _EventTail, progress: Progress, ranks_dir: Path
) -> StopRequested | None:
    """Forward rank 0's events to the job until the launcher exits; a StopRequested the job raises is passed on to
    the ranks (and returned), anything else it raises ends the ranks and propagates. Ranks that have not left
    `STOP_GRACE_S` after a stop request are ended."""
    stop: StopRequested | None = None
    stop_deadline = None
    while True:
        exited = launcher.poll() is not None
        for event in tail.new_events():
            try:
                progress.callback(event)
            except StopRequested as exc:
                if stop is None:
                    stop, stop_deadline = exc, time.monotonic() + STOP_GRACE_S
                    (ranks_dir / STOP).touch()
        if exited:
            return stop
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            _terminate(launcher)
            return stop
        try:
            launcher.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass


def _terminate(launcher: subprocess.Popen) -> None:
    """SIGTERM the launcher (torchrun passes it to every rank), SIGKILL it if it does not leave in time."""
    if launcher.poll() is not None:
        return
    launcher.terminate()
    try:
        launcher.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def _outcome(returncode: int, ranks_dir: Path, stop: StopRequested | None, devices: int) -> dict[str, Any]:
    """The fit's result from rank 0, or the error the ranks reported, or what the launcher said."""
    outcome_path = ranks_dir / OUTCOME
    if stop is not None and not outcome_path.exists():
        raise stop  # ended after the grace period: the newest complete checkpoint is where the resume starts
    if returncode == 0 and outcome_path.exists():
        outcome = json.loads(outcome_path.read_text())
        if "stopped" in outcome:
            raise stop or StopRequested(outcome["stopped"])
        return outcome["result"]
    reported = {}
    for error_file in sorted(ranks_dir.glob("error-*.json")):
        error = json.loads(error_file.read_text())
        cls = getattr(errors, error["type"], None)
        if isinstance(cls, type) and issubclass(cls, errors.AlignlabError):
            raise cls(error["message"])  # the user's to fix, as on one device
        reported[error["rank"]] = f"rank {error['rank']}: {error['type']}: {error['message']}"
    started = sorted(int(p.stem.split("-")[1]) for p in ranks_dir.glob("rank-*.pid"))
    silent = [rank for rank in started if rank not in reported]
    said = (ranks_dir / LAUNCH_LOG).read_text(errors="replace").strip().splitlines()[-12:]
    parts = [f"{devices} ranks ended with exit status {returncode} and no result"]
    if silent:
        parts.append(f"rank {', '.join(map(str, silent))} ended without reporting an error (killed or lost)")
    parts += [reported[rank] for rank in sorted(reported)]
    raise RankFailed(
        "; ".join(parts) + ". The newest complete checkpoint is kept for the resume. The launcher's last lines "
        f"({ranks_dir / LAUNCH_LOG}):\n" + "\n".join(said)
    )


# ------------------------------------------------------------------------------------------------ the rank side


def _fit_of(stage_name: str) -> Callable[..., dict[str, Any]]:
    """Only a declared stage's own `fit` runs in a rank."""
    module = importlib.import_module(stage_declaration(stage_name).module)
    fit = getattr(module, "fit", None)
    if fit is None:
        raise ConfigError(f"{stage_name} has no fit function: it cannot run on several devices")
    return fit


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stop at the next agreed step; leave at once if that never comes (a collective waiting on a dead rank)."""
    _SIGTERM_RECEIVED.set()
    timer = threading.Timer(RANK_EXIT_GRACE_S, lambda: os._exit(128 + signal.SIGTERM))
    timer.daemon = True
    timer.start()


class _EventWriter:
    """Rank 0's `on_progress`: one JSON line per event, flushed, for the parent to forward."""

    def __init__(self, path: Path):
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the rank's lifetime)

    def __call__(self, event: dict[str, Any]) -> None:
        self.handle.write(json.dumps(event, default=str) + "\n")
        self.handle.flush()


def rank_main(plan_path: str) -> int:
    global _CURRENT
    _set_parent_death_signal()
    signal.signal(signal.SIGTERM, _on_sigterm)
    ranks_dir = Path(plan_path).parent
    plan = json.loads(Path(plan_path).read_text())
    index, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    _CURRENT = Rank(index=index, world=world, local=local, ranks_dir=ranks_dir)
    (ranks_dir / f"rank-{index}.pid").write_text(str(os.getpid()), encoding="utf-8")  # for people and tests
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    progress = Progress(plan["stage"], _EventWriter(ranks_dir / EVENTS) if index == 0 else None, role=plan["role"])
    try:
        fit = _fit_of(plan["stage"])
        spec = from_dict(RunSpec, plan["spec"])
        inputs = {name: Path(path) for name, path in plan["inputs"].items()}
        result = fit(spec, inputs, Path(plan["out_dir"]), progress, plan["resume"], **plan["options"])
        outcome: dict[str, Any] = {"result": result}
    except StopRequested as exc:
        outcome = {"stopped": str(exc)}
    except BaseException as exc:  # noqa: BLE001  (told to the parent, then the rank fails)
        error = {"rank": index, "type": type(exc).__name__, "message": str(exc)}
        (ranks_dir / f"error-{index}.json").write_text(json.dumps(error), encoding="utf-8")
        raise
    if index == 0:
        temporary = ranks_dir / (OUTCOME + ".tmp")
        temporary.write_text(json.dumps(outcome, default=str), encoding="utf-8")
        temporary.replace(ranks_dir / OUTCOME)
    return 0


if __name__ == "__main__":
    # run as `-m pipeline.distributed`, this file is `__main__`: the rank's state must live in the module the stages
    # import, so the entry goes through it
    from pipeline import distributed

    sys.exit(distributed.rank_main(sys.argv[1]))
