"""Uploaded datasets: content-addressed, size-limited blobs in Redis, materialized once by a worker.

The dashboard cannot put a file on a RunPod worker's disk; it puts the bytes in Redis under their SHA-256
(with a TTL) and the RunSpec says `blob:<sha256>`. The worker writes the blob into ALIGNLAB_HOME/blobs once
(atomically, hash checked); the stable name keeps artifact keys identical on every worker.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import redis

from pipeline.core.errors import DataError
from pipeline.paths import BLOB_PREFIX, blob_digest, blob_path
from pipeline.validation import ValidationReport, validate_file

MAX_BLOB_BYTES = 64 * 2**20
BLOB_TTL_S = 7 * 24 * 3600


def _key(sha: str) -> str:
    return f"alignlab:blob:{sha}"


def put_blob(connection: redis.Redis, data: bytes, filename: str = "upload") -> str:
    """Store an uploaded file; returns the reference `blob:<sha256>` to put in DataConfig.instructions."""
    if len(data) > MAX_BLOB_BYTES:
        raise DataError(
            f"{filename}: {len(data) / 2**20:.1f} MiB is over the {MAX_BLOB_BYTES // 2**20} MiB upload limit; "
            "put the file on the worker's volume or the Hugging Face hub and give its path or id instead"
        )
    sha = hashlib.sha256(data).hexdigest()
    connection.set(_key(sha), data, ex=BLOB_TTL_S)
    return f"{BLOB_PREFIX}{sha}"


def materialize(connection: redis.Redis, reference: str, home: Path) -> Path:
    """Write blob `reference` under home/blobs once (hash checked, atomic); returns its path."""
    sha = blob_digest(reference)
    target = blob_path(home, reference)
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
        return target
    data = connection.get(_key(sha))
    if data is None:
        raise DataError(
            f"{reference}: the uploaded file expired from Redis (kept {BLOB_TTL_S // 86400} days); upload it again"
        )
    if hashlib.sha256(data).hexdigest() != sha:
        raise DataError(f"{reference}: the stored bytes do not match their hash; upload the file again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def check_upload(kind: str, data: bytes, filename: str, instruction_field: str = "instruction") -> ValidationReport:
    """An uploaded file of `kind` (instructions, sft, negatives, pairs) through the stages' own validators, its
    issues naming `filename` and the row."""
    import tempfile

    if len(data) > MAX_BLOB_BYTES:
        raise DataError(f"{filename}: over the {MAX_BLOB_BYTES // 2**20} MiB upload limit")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(filename).name
        path.write_bytes(data)
        report = validate_file(kind, path, instruction_field=instruction_field)
    report.source = filename
    for issue in report.issues:
        issue.file = filename if issue.file else None
    return report
