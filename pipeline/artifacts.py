"""Content-addressed artifact store with atomic writes and `COMPLETE` markers.

An artifact's key hashes (stage, its config slice, its input artifact keys, code version), so an identical
stage is found and reused instead of recomputed. A stage writes into a stable work directory under
`.partial/<key>` (so training can resume from its checkpoints after a crash), guarded by a file lock so
two writers of one key never interleave; on success the `COMPLETE` marker (metadata: config, inputs,
LoadInfo, timings) is written and the directory is renamed into place in one step. A directory without
`COMPLETE` is never read as an output.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.core.configs import canonical_json
from pipeline.core.errors import ArtifactError

COMPLETE = "COMPLETE"
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}-[0-9a-f]{20}$")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the pipeline's source: a code change invalidates cached artifacts."""
    from pipeline import __version__

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def artifact_key(
    stage: str, config_slice: Any, input_keys: list[str] | dict[str, str], version: str | None = None
) -> str:
    """`<stage>-<hash>` of (stage, config slice, input keys, code version)."""
    if not re.match(r"^[a-z][a-z0-9_]{0,63}$", stage):
        raise ArtifactError(f"stage name {stage!r} must be lowercase letters, digits and underscores")
    payload = canonical_json(
        {"stage": stage, "config": config_slice, "inputs": input_keys, "code": version or code_version()}
    )
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


@dataclass
class ArtifactWriter:
    key: str
    dir: Path
    meta: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # another writer completed this key while we waited for the lock


class ArtifactStore:
    """Artifacts live under `root/<key>/`; work in progress under `root/.partial/<key>/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".partial").mkdir(exist_ok=True)
        (self.root / ".locks").mkdir(exist_ok=True)

    def _checked(self, key: str) -> str:
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise ArtifactError(f"artifact key {key!r} is not a valid key (<stage>-<20 hex digits>)")
        return key

    def path(self, key: str) -> Path:
        """Final directory of `key`, confined to the store's root."""
        target = (self.root / self._checked(key)).resolve()
        if target.parent != self.root:
            raise ArtifactError(f"artifact key {key!r} escapes the store root {self.root}")
        return target

    def partial_path(self, key: str) -> Path:
        return self.root / ".partial" / self._checked(key)

    def is_complete(self, key: str) -> bool:
        return (self.path(key) / COMPLETE).is_file()

    def meta(self, key: str) -> dict[str, Any]:
        """The metadata written with the COMPLETE marker."""
        marker = self.path(key) / COMPLETE
        if not marker.is_file():
            raise ArtifactError(f"artifact {key} is not complete (no {COMPLETE} marker under {self.path(key)})")
        return json.loads(marker.read_text(encoding="utf-8"))

    def get(self, key: str) -> Path:
        """Directory of a complete artifact; raises `ArtifactError` when it is missing or incomplete."""
        if not self.is_complete(key):
            raise ArtifactError(f"artifact {key} is missing or incomplete under {self.root}; rerun its stage")
        return self.path(key)

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if KEY_PATTERN.match(p.name) and (p / COMPLETE).is_file())

    @contextmanager
    def writer(
        self, key: str, meta: dict[str, Any] | None = None, lock_timeout: float = 3600.0
    ) -> Iterator[ArtifactWriter]:
        """Write artifact `key`: yields a work dir; on a clean exit marks it COMPLETE and moves it into place.

        If the key is already complete (now, or once the lock is ours), yields with `reused=True` and the final
        directory, and writes nothing. On an exception the work dir stays (for resume) and nothing is marked.
        """
        lock_path = self.root / ".locks" / f"{self._checked(key)}.lock"
        with open(lock_path, "a+") as lock:
            deadline = time.monotonic() + lock_timeout
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ArtifactError(
                            f"artifact {key}: another writer held the lock for {lock_timeout:.0f}s"
                        ) from None
                    time.sleep(0.05)
            try:
                if self.is_complete(key):
                    yield ArtifactWriter(key, self.path(key), self.meta(key), reused=True)
                    return
                work = self.partial_path(key)
                work.mkdir(parents=True, exist_ok=True)
                handle = ArtifactWriter(key, work, dict(meta or {}))
                started = time.time()
                yield handle
                handle.meta.setdefault("key", key)
                handle.meta.setdefault("code_version", code_version())
                handle.meta["written_at"] = time.time()
                handle.meta.setdefault("seconds", round(time.time() - started, 3))
                _write_atomic(work / COMPLETE, canonical_json(handle.meta))
                _fsync_dir(work)
                final = self.path(key)
                if final.exists():  # a stale incomplete directory (should not happen: renames are atomic)
                    shutil.rmtree(final)
                os.rename(work, final)
                _fsync_dir(self.root)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> int:
    """Write rows as JSON lines (UTF-8); returns the count."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
