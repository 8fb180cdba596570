"""Local paths in a queued RunSpec are confined to allowed roots.

Whoever can submit a run (the dashboard, Redis) decides which files the GPU worker reads: a model directory, an
adapter, an instructions file. Paths are resolved (symlinks and `..` included) and must lie under
ALIGNLAB_HOME or one of the directories in ALIGNLAB_DATA_ROOTS (os.pathsep-separated). Hub ids, the tiny model,
`demo` and uploaded `blob:` datasets are not paths and pass.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ConfigError

NOT_PATHS = ("demo",)


def allowed_roots() -> list[Path]:
    from pipeline.tiny import alignlab_home

    extra = [Path(p).expanduser() for p in os.environ.get("ALIGNLAB_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    return [root.resolve() for root in [alignlab_home(), *extra]]


def written_as_path(value: str) -> bool:
    """Spelled as a filesystem path (./x, /x, ~/x, a/b/c), never a hub id (org/name)."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1


def is_local_path(value: str) -> bool:
    """A value the loaders would read from disk (not a hub id, the tiny model, `demo` or a blob)."""
    if value in NOT_PATHS or value.startswith("blob:"):
        return False
    return written_as_path(value) or Path(value).expanduser().exists()


def confine(value: str, field: str, roots: list[Path] | None = None) -> None:
    """Raise ConfigError naming `field` if local path `value` resolves outside every allowed root."""
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


def confine_spec(spec, roots: list[Path] | None = None) -> None:
    """Every local path of a RunSpec, checked before it is queued and again by the worker before it reads."""
    confine(spec.base_model.name_or_path, "ModelConfig.name_or_path", roots)
    if spec.base_model.adapter:
        confine(spec.base_model.adapter, "ModelConfig.adapter", roots)
    confine(spec.data.instructions, "DataConfig.instructions", roots)
