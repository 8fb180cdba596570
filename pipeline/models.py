"""The one model loader: dtype and 8-bit decisions (recorded, never silent), adapters, release, peak memory.

Every stage loads its model through `loaded(...)`, which frees it on exit (also on exceptions) and
records the peak memory of the block, so a run holds one model at a time and can prove it.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import resource
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.catalog import packaged
from pipeline.core.configs import TINY_MODEL, ModelConfig
from pipeline.core.errors import ModelLoadError
from pipeline.paths import written_as_path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
SIXTEEN_BIT_HEADROOM = 1.3  # weights + activations/KV cache for generation; above this, "auto" goes 8-bit


@dataclass
class LoadInfo:
    """How a model was loaded; stored with every stage so a fallback is visible on the dashboard."""

    name_or_path: str
    resolved: str
    revision: str | None
    adapter: str | None
    device: str
    dtype: str
    quantization: str  # "none" or "8bit"
    parameter_count: int
    load_seconds: float
    fallback: str | None = None  # why the model was loaded differently from what the config asked, if it was
    notes: list[str] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None  # "cuda_max_allocated", "process_peak_rss" or "process_lifetime_peak_rss"
    memory_before_bytes: int | None = None
    memory_after_release_bytes: int | None = None
    # whether the model object itself was gone after the block (a weak reference says so exactly, where RSS on a CPU
    # moves by a few MiB with whatever the process imported or cached meanwhile)
    model_released: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: LoadInfo


# ----------------------------------------------------------------------------------------------- decisions


def resolve_model(name_or_path: str) -> str:
    """A local directory (confirmed to exist), the built tiny model, a catalog model (fetched and converted on first
    use), or a Hugging Face hub id."""
    if name_or_path == TINY_MODEL:
        from pipeline.tiny import ensure_tiny

        return str(ensure_tiny())
    entry = packaged(name_or_path)
    if entry is not None:
        from pipeline.packaged import ensure_packaged

        return str(ensure_packaged(entry))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelLoadError(
                f"model {name_or_path!r}: the directory exists but has no config.json; point at a directory "
                "written by save_pretrained"
            )
        return str(path.resolve())
    if written_as_path(name_or_path) or not HUB_ID.match(name_or_path):
        raise ModelLoadError(
            f"model {name_or_path!r}: no such directory, and not a Hugging Face id (org/name); check the path"
        )
    return name_or_path


def prepare_model(name_or_path: str, on_progress: Callable[[dict[str, Any]], None]) -> None:
    """Make a model that alignlab builds or fetches itself (the tiny model, a catalog model) before a stage loads it,
    reporting each step as progress: minutes of building or converting show as such, not as a stage stuck at 0%."""

    def step(done: int, total: int, message: str) -> None:
        text = f"preparing model {message}"
        on_progress({"kind": "progress", "done": done, "total": total, "message": text})
        on_progress({"kind": "log", "message": f"[{done}/{total}] {text}"})  # in the log tail and the CLI too

    entry = packaged(name_or_path)
    if entry is not None:
        from pipeline.packaged import ensure_packaged, is_ready

        if not is_ready(entry):
            ensure_packaged(entry, on_step=step)
    elif name_or_path == TINY_MODEL:
        from pipeline.tiny import ensure_tiny, is_built

        if not is_built():
            step(0, 1, f"{TINY_MODEL}: building the offline tiny model (tokenizer, weights, pre-training)")
            built = ensure_tiny()
            step(1, 1, f"{TINY_MODEL}: ready at {built}")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def choose_device(config: ModelConfig) -> str:
    if config.device == "cuda" and not cuda_available():
        raise ModelLoadError("ModelConfig.device: 'cuda' was asked for but no CUDA device is visible")
    if config.device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return config.device


def choose_dtype(config: ModelConfig, device: str) -> tuple[str, str | None]:
    """The dtype to load in, and the reason when it differs from what the config asked."""
    import torch

    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if config.dtype == "auto":
            return ("bfloat16" if bf16 else "float16"), None
        if config.dtype == "bfloat16" and not bf16:
            return "float16", "this GPU does not support bfloat16; loaded in float16"
        return config.dtype, None
    if config.dtype == "auto":
        return "float32", None
    if config.dtype == "float16":
        # fp16 matmuls on CPU are slow or unsupported for training; fp32 is the CPU path.
        return "float32", "float16 is not supported for CPU training; loaded in float32"
    return config.dtype, None


def free_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def count_parameters(resolved: str, config: ModelConfig) -> int:
    """Parameter count from the model's config alone (meta tensors, nothing allocated)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(
        resolved, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)
    skeleton.tie_weights()  # tied embeddings count once, as in the loaded model
    return sum(p.numel() for p in skeleton.parameters())


def decide_8bit(config: ModelConfig, device: str, parameter_count: int | None) -> tuple[bool, str | None, str | None]:
    """(load in 8-bit?, fallback reason, note). `auto` = only when 16-bit would not fit on the device (the only
    case that reads `parameter_count`)."""
    wanted = config.load_in_8bit
    note = None
    if wanted == "auto":
        needed = parameter_count * 2 * SIXTEEN_BIT_HEADROOM
        free = free_memory_bytes(device)
        wanted = needed > free
        note = (
            f"load_in_8bit=auto: 16-bit needs ~{needed / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free on {device} "
            f"-> {'8-bit' if wanted else '16-bit'}"
        )
    if not wanted:
        return False, None, note
    if not bitsandbytes_available():
        return False, "8-bit requested but bitsandbytes is not installed (pip install 'alignlab[gpu]')", note
    if device == "cpu":
        try:
            import bitsandbytes  # noqa: F401  (0.50 registers its CPU backend on import)
        except Exception as exc:  # a broken install is a fallback with its reason, not a crash mid-run
            return False, f"8-bit requested but bitsandbytes failed to import on CPU: {exc}", note
    return True, None, note


# ----------------------------------------------------------------------------------------------- loading


# what a loaded model is for -> the transformers Auto class that builds it
HEADS = {"causal_lm": "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification"}


def load_model(
    config: ModelConfig, trainable_adapter: bool = False, head: str = "causal_lm"
) -> tuple[Any, Any, LoadInfo]:
    """Load model + tokenizer as `config` says; returns them with a `LoadInfo` of how it was done. `head` picks
    the model class (`HEADS`): a causal LM, or a sequence classifier (a reward model)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BitsAndBytesConfig

    started = time.perf_counter()
    resolved = resolve_model(config.name_or_path)
    device = choose_device(config)
    dtype_name, fallback = choose_dtype(config, device)
    notes: list[str] = []
    parameter_count = None
    if config.load_in_8bit == "auto":  # only then is the size needed before the weights are read
        try:
            parameter_count = count_parameters(resolved, config)
        except Exception as exc:
            raise ModelLoadError(f"model {config.name_or_path!r}: could not read its config ({exc})") from exc
    use_8bit, bnb_fallback, note = decide_8bit(config, device, parameter_count)
    if note:
        notes.append(note)
    fallback = "; ".join(r for r in (fallback, bnb_fallback) if r) or None
    kwargs: dict[str, Any] = {
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "dtype": getattr(torch, dtype_name),
    }
    if use_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
        if device == "cpu":
            # bitsandbytes warns on every CPU matmul; say it once here instead.
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            notes.append("8-bit on CPU: bitsandbytes casts matmul inputs to float16")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
        model = getattr(transformers, HEADS[head]).from_pretrained(resolved, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"model {config.name_or_path!r} ({resolved}): loading failed: {exc}") from exc
    if not use_8bit:
        model.to(device)
    elif device == "cpu":
        release_checkpoint_pages(model)
    if parameter_count is None:  # counted as `count_parameters` counts: a tied weight once
        parameter_count = sum(p.numel() for p in model.parameters())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append("tokenizer had no pad token; using its eos token for padding")
    if config.adapter:
        from peft import PeftModel

        adapter = Path(config.adapter).expanduser()
        if not (adapter / "adapter_config.json").exists():
            raise ModelLoadError(f"adapter {config.adapter!r}: no adapter_config.json there; point at a LoRA directory")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable_adapter)
    model.eval()
    _LOADED_MODELS.add(model)
    info = LoadInfo(
        name_or_path=config.name_or_path,
        resolved=resolved,
        revision=config.revision,
        adapter=config.adapter,
        device=device,
        dtype=dtype_name,
        quantization="8bit" if use_8bit else "none",
        parameter_count=parameter_count,
        load_seconds=round(time.perf_counter() - started, 3),
        fallback=fallback,
        notes=notes,
    )
    return model, tokenizer, info


# ----------------------------------------------------------------------------------------------- memory


def release_checkpoint_pages(model: Any) -> None:
    """After an 8-bit load on CPU, give the weights that stayed unquantized (embeddings, norms, a tied head) memory
    of their own, so that the checkpoint's memory map, which they would otherwise keep alive, is unmapped, and hand
    the float temporaries of the quantization back to the OS (glibc `malloc_trim`). Without it the 8-bit model kept
    the whole float32 file resident beside its int8 copy (measured: more resident memory than float32 itself)."""
    import gc

    import torch

    for tensor in [*model.parameters(), *model.buffers()]:  # a tied weight is one Parameter: copied once
        if tensor.dtype != torch.int8 and tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free memory to the OS where the C library can (glibc); elsewhere a no-op."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class MemoryTracker:
    """Peak memory of a block: CUDA max allocated, or the process peak RSS (reset via /proc clear_refs)."""

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device == "cuda" else "process_peak_rss"

    def start(self) -> int:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return int(torch.cuda.memory_allocated())
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        except OSError:
            self.kind = "process_lifetime_peak_rss"  # cannot reset: the peak covers the whole process
        return current_rss_bytes()

    def peak(self) -> int:
        if self.device == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated())
        if self.kind == "process_peak_rss":
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def current(self) -> int:
        if self.device == "cuda":
            import torch

            return int(torch.cuda.memory_allocated())
        return current_rss_bytes()


# every model `load_model` returned in this process, while it is alive (a worker that runs jobs in its own process
# checks after each job that none is left)
_LOADED_MODELS: weakref.WeakSet = weakref.WeakSet()


def models_in_memory() -> weakref.WeakSet:
    """The models this process loaded that are still alive (weakly held: the set keeps none of them alive)."""
    return weakref.WeakSet(_LOADED_MODELS)


def release_memory() -> None:
    """Collect cycles (TRL's patched forward makes some) and return cached CUDA blocks to the driver."""
    gc.collect()
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


@contextmanager
def loaded(config: ModelConfig, trainable_adapter: bool = False, head: str = "causal_lm") -> Iterator[LoadedModel]:
    """`with loaded(cfg) as m:` load a model, and free it on exit (also on exceptions), recording peak memory.

    Callers must not keep references to `m.model` beyond the block; the holder's references are dropped here.
    """
    device = choose_device(config)
    tracker = MemoryTracker(device)
    before = tracker.start()
    model, tokenizer, info = load_model(config, trainable_adapter=trainable_adapter, head=head)
    holder = LoadedModel(model, tokenizer, info)
    model_ref = weakref.ref(model)
    del model, tokenizer
    try:
        yield holder
    finally:
        info.memory_before_bytes = before
        info.peak_memory_bytes = tracker.peak()
        info.peak_memory_kind = tracker.kind
        holder.model = None
        holder.tokenizer = None
        release_memory()
        info.memory_after_release_bytes = tracker.current()
        info.model_released = model_ref() is None


def environment_summary() -> dict[str, Any]:
    """Versions and device, saved with artifacts and benchmark results."""
    import torch

    summary = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count(),
        "bitsandbytes": bitsandbytes_available(),
    }
    for name in ("transformers", "trl", "peft"):
        module = importlib.import_module(name)
        summary[name] = getattr(module, "__version__", "?")
    return summary
