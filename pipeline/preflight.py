"""Go / no-go before paying for GPU hours: what this machine has against what the run needs, then the whole DAG at
tiny scale on the configured model. Each line of the checklist says what was checked and why it passed or not."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.configs import RunSpec, preflight_spec
from pipeline.core.errors import ConfigError

DISK_COPIES = 4  # base in the HF cache, the merged SFT→DPO init, checkpoints, adapters and samples
DISK_HEADROOM_BYTES = 5 * 2**30


@dataclass
class Check:
    item: str
    passed: bool
    reason: str
    required: bool = True


def _gpu() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("GPU, driver and CUDA visible", False, f"torch {torch.__version__} sees no CUDA device")
    name = torch.cuda.get_device_name(0)
    free, total = torch.cuda.mem_get_info()
    return Check(
        "GPU, driver and CUDA visible",
        True,
        f"{name}, CUDA {torch.version.cuda}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free",
    )


def _bitsandbytes(spec: RunSpec, cuda: bool) -> Check:
    wanted = spec.base_model.load_in_8bit
    required = wanted is True
    try:
        import bitsandbytes as bnb
        import torch
    except Exception as exc:  # noqa: BLE001 - an unusable install is a finding, not a crash
        return Check("bitsandbytes usable for 8-bit", False, f"import failed: {exc}", required)
    try:
        device = "cuda" if cuda else "cpu"
        layer = bnb.nn.Linear8bitLt(16, 16, has_fp16_weights=False).to(device)
        layer(torch.randn(2, 16, device=device, dtype=torch.float16 if cuda else torch.float32))
    except Exception as exc:  # noqa: BLE001
        return Check("bitsandbytes usable for 8-bit", False, f"an 8-bit layer failed on {device}: {exc}", required)
    return Check("bitsandbytes usable for 8-bit", True, f"{bnb.__version__}: an 8-bit layer ran on {device}")


def _model(spec: RunSpec) -> tuple[Check, str | None, int | None]:
    """(the check, the model's resolved location, its parameter count)."""
    from pipeline.models import count_parameters, resolve_model

    name = spec.base_model.name_or_path
    try:
        resolved = resolve_model(name)
        params = count_parameters(resolved, spec.base_model)
    except Exception as exc:  # noqa: BLE001 - unreachable hub, bad path, gated model without a token
        return Check("model reachable", False, f"{name}: {exc}"), None, None
    return Check("model reachable", True, f"{name} → {resolved}: {params / 1e6:,.1f}M parameters"), resolved, params


def _memory(spec: RunSpec, resolved: str | None, cuda: bool, home: Path) -> Check:
    """The largest stage's planned peak (pipeline.core.memory_plan) against what this machine has free."""
    from pipeline.core.memory_plan import BASE_MODEL, planned_peaks, read_shape, read_shapes, size_text, terms_text
    from pipeline.models import free_memory_bytes

    item = "memory for the largest stage"
    device = "cuda" if cuda else "cpu"
    free = free_memory_bytes(device)
    if resolved is None:
        return Check(item, False, "unknown: the model could not be inspected")
    try:
        shape = read_shape(resolved, home, spec.base_model.revision)
    except ConfigError as exc:
        return Check(item, False, f"unknown: {exc}")
    if shape is None:
        return Check(item, False, f"unknown: no config.json for {resolved} on this machine")
    peaks = planned_peaks({**read_shapes(spec, home), BASE_MODEL: shape}, spec, device)
    if not peaks:
        return Check(item, True, "no selected stage loads a model")
    largest = max(peaks, key=lambda p: p.total)
    return Check(
        item,
        free >= largest.total,
        f"~{size_text(largest.total)} planned for {largest.node} ({terms_text(largest.terms)}), "
        f"{size_text(free)} free on {device}",
    )


def _disk(params: int | None, home: Path) -> Check:
    home.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(home).free
    if params is None:
        return Check("free disk", free > DISK_HEADROOM_BYTES, f"{free / 2**30:.1f} GiB free under {home}")
    need = int(params * 2 * DISK_COPIES + DISK_HEADROOM_BYTES)
    return Check(
        "free disk",
        free >= need,
        f"~{need / 2**30:.1f} GiB needed ({DISK_COPIES} 16-bit copies + 5 GiB), {free / 2**30:.1f} GiB free under "
        f"{home}",
    )


def _devices(spec: RunSpec) -> Check:
    """Whether this machine can run the training sections' `devices` with their strategies."""
    from pipeline.distributed import check_devices

    asked = {section: getattr(spec, section) for section in ("sft", "dpo")}
    wanted = ", ".join(f"{s} {c.devices} ({c.distributed})" for s, c in asked.items())
    try:
        for section, config in asked.items():
            check_devices(config, section)
    except ConfigError as exc:
        return Check("devices for training", False, str(exc))
    return Check("devices for training", True, f"{wanted}: this machine can run them")


def environment_checks(spec: RunSpec, home: Path, redis_check: Any = None) -> list[Check]:
    """Everything but the DAG run. `redis_check` returns a Check (the queue side lives in workers/)."""
    from pipeline.models import cuda_available

    cuda = cuda_available()
    gpu = _gpu()
    if spec.base_model.device == "cpu":
        gpu.required, gpu.reason = False, gpu.reason + " (the config asks for the CPU)"
    model, resolved, params = _model(spec)
    checks = [
        gpu,
        _bitsandbytes(spec, cuda),
        model,
        _memory(spec, resolved, cuda, home),
        _disk(params, home),
        _devices(spec),
    ]
    if redis_check is not None:
        checks.append(redis_check())
    return checks


def dag_check(spec: RunSpec, home: Path) -> Check:
    """The whole DAG at tiny scale on the configured model, in this process."""
    import time

    from pipeline.dag import run_dag

    small = preflight_spec(spec)
    started = time.perf_counter()
    try:
        result = run_dag(small, home)
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return Check("whole DAG at tiny scale", False, f"{type(exc).__name__}: {exc}")
    # a sample-size check ("at least N held-out pairs") fails at tiny scale by design: it is not a finding here
    failed = [
        f"{node}: {name} ({check.get('detail')})"
        for node, r in result.results.items()
        for name, check in r.checks.items()
        if not check.get("passed", True) and not name.startswith("at least ")
    ]
    seconds = time.perf_counter() - started
    if failed:
        return Check("whole DAG at tiny scale", False, f"{'; '.join(failed)} ({seconds:.0f} s)")
    return Check(
        "whole DAG at tiny scale",
        True,
        f"{len(result.results)} stages on {small.data.max_instructions} instructions, 2 steps per training stage, "
        f"in {seconds:.0f} s",
    )


def verdict(checks: list[Check]) -> dict[str, Any]:
    go = all(c.passed for c in checks if c.required)
    return {"go": go, "checklist": [asdict(c) for c in checks]}
