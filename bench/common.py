"""Helpers the benchmarks share: a free port for a server they start, and a run's final status in its database."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_run_status(db: Path) -> str | None:
    """The only run's status in the SQLite store at `db` once it is final (succeeded, failed, cancelled), else None
    (also while the database or its schema does not exist yet)."""
    from sqlalchemy import create_engine, text

    from db.models import RunStatus

    if not db.exists():
        return None
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            status = connection.execute(text("SELECT status FROM runs")).scalar()
    except Exception:  # noqa: BLE001 - the schema is still being created
        status = None
    finally:
        engine.dispose()
    return status if status is not None and RunStatus(status).final else None
