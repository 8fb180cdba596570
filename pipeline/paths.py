"""Local paths in a queued RunSpec are confined to allowed roots.

Whoever can submit a run (the dashboard, Redis) decides which files the GPU worker reads: a model directory, an
adapter, an instructions file. Paths are resolved (symlinks and `..` included) and must lie under
ALIGNLAB_HOME or one of the directories in ALIGNLAB_DATA_ROOTS (os.pathsep-separated). Hub ids, the tiny model,
`demo` and uploaded datasets are not paths and pass; an uploaded dataset's reference is `blob:` and a sha256 hex
digest, nothing else, and its file is re-hashed whenever it is read.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from pipeline.core.errors import ConfigError, DataError

NOT_PATHS = ("demo", "verifiable")  # the shipped data sets (pipeline.sources.SHIPPED)
BLOB_PREFIX = "blob:"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def blob_digest(reference: str, field: str = "DataConfig.instructions") -> str:
    """The sha256 of a `blob:<sha256>` reference; anything else after `blob:` is refused, naming `field`."""
    digest = reference.removeprefix(BLOB_PREFIX)
    if not _SHA256_HEX.fullmatch(digest):
        raise ConfigError(
            f"{field}: {reference!r} is not an uploaded file's reference; a blob reference is 'blob:' followed by "
            "the 64 lowercase hex digits of the file's sha256 (upload the file in the dashboard to get one)"
        )
    return digest


def blob_path(home: Path, reference: str) -> Path:
    """Where the worker keeps the uploaded file `reference` (a checked digest: never a path of the caller's)."""
    return home / "blobs" / f"{blob_digest(reference)}.jsonl"


def read_blob(home: Path, reference: str) -> Path:
    """The materialized blob's path after re-hashing its bytes: a file changed on disk is refused."""
    path = blob_path(home, reference)
    if not path.exists():
        raise DataError(f"instructions {reference}: the uploaded file was not materialized at {path}; resubmit it")
    if hashlib.sha256(path.read_bytes()).hexdigest() != blob_digest(reference):
        raise DataError(f"instructions {reference}: {path} no longer matches its sha256; upload the file again")
    return path


def allowed_roots() -> list[Path]:
    from pipeline.core.home import alignlab_home

    extra = [Path(p).expanduser() for p in os.environ.get("ALIGNLAB_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    return [root.resolve() for root in [alignlab_home(), *extra]]


def written_as_path(value: str) -> bool:
    """Spelled as a filesystem path (./x, /x, ~/x, a/b/c), never a hub id (org/name)."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1


def is_local_path(value: str) -> bool:
    """A value the loaders would read from disk (not a hub id, the tiny model, `demo` or a blob)."""
    if value in NOT_PATHS or value.startswith(BLOB_PREFIX):
        return False
    return written_as_path(value) or Path(value).expanduser().exists()


def confine(value: str, field: str, roots: list[Path] | None = None) -> None:
    """Raise ConfigError naming `field` if local path `value` resolves outside every allowed root, or if a blob
    reference is anything but a sha256 digest."""
    if value.startswith(BLOB_PREFIX):
        blob_digest(value, field)
        return
    if not is_local_path(value):
        return
    roots = roots if roots is not None else allowed_roots()
    resolved = Path(value).expanduser().resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ConfigError(
            f"{field}: {value} resolves to {resolved}, outside the directories runs may read "
            f"({', '.join(str(r) for r in roots)}); move the data under ALIGNLAB_HOME or add its directory to "
            "ALIGNLAB_DATA_ROOTS on the worker"
        )


DATASET_DIR_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")  # written by save_to_disk
# what a local path must be for each field: (a file, or a directory holding one of these files, or both)
EXPECTED = {
    "ModelConfig.name_or_path": (False, ("config.json",), "a model directory (with config.json)"),
    "ModelConfig.adapter": (False, ("adapter_config.json",), "a LoRA adapter directory (with adapter_config.json)"),
    "DataConfig.instructions": (
        True,
        DATASET_DIR_MARKERS,
        "a JSONL file or a directory saved with datasets' save_to_disk",
    ),
}


def require_kind(value: str, field: str) -> None:
    """A local path must exist and be what `field` reads (a file, a model directory...), named in the error."""
    if not is_local_path(value):
        return
    path = Path(value).expanduser()
    file_ok, markers, what = EXPECTED[field]
    if not path.exists():
        raise ConfigError(f"{field}: {value} does not exist; it must be {what}")
    if path.is_file() and file_ok:
        return
    if path.is_dir() and any((path / marker).exists() for marker in markers):
        return
    if path.is_dir():
        kind = "a directory"
    elif path.is_fifo():
        kind = "a FIFO (named pipe)"
    elif path.is_char_device() or path.is_block_device() or path.is_socket():
        kind = "a device or socket"
    else:
        kind = "a file"
    raise ConfigError(f"{field}: {value} is {kind}, not {what}")


def confine_spec(spec, roots: list[Path] | None = None) -> None:
    """Every local path of a RunSpec, checked before it is queued and again by the worker before it reads: inside
    the allowed roots, existing, and of the kind its field reads."""
    fields = [
        (spec.base_model.name_or_path, "ModelConfig.name_or_path"),
        (spec.base_model.adapter, "ModelConfig.adapter"),
        (spec.data.instructions, "DataConfig.instructions"),
        (spec.judge.model.name_or_path, "ModelConfig.name_or_path"),
        (spec.judge.model.adapter, "ModelConfig.adapter"),
    ]
    for value, field in fields:
        if value:
            confine(value, field, roots)
            require_kind(value, field)
