"""Engines and sessions. `DATABASE_URL`, default a SQLite file under ALIGNLAB_HOME.

SQLite: WAL, busy_timeout, foreign keys on, and `BEGIN IMMEDIATE` for every write transaction (a deferred
BEGIN that upgrades to a write fails at once with "database is locked" when another connection committed
first). Reads use a second engine without the IMMEDIATE hook, so the dashboard never queues behind writers.
Sessions are short and owned by the caller: `with write_session(engine) as s:`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from pipeline.core.home import alignlab_home

BUSY_TIMEOUT_MS = 30_000


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    home = alignlab_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'alignlab.db'}"


def make_engine(url: str | None = None, *, immediate: bool = True, foreign_keys: bool = True) -> Engine:
    """An engine for `url`; on SQLite with the WAL/busy_timeout/foreign-keys recipe (and BEGIN IMMEDIATE)."""
    url = url or database_url()
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver stops emitting BEGIN; the hook below does it
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            f"busy_timeout={BUSY_TIMEOUT_MS}",
            f"foreign_keys={'ON' if foreign_keys else 'OFF'}",
            "synchronous=NORMAL",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@lru_cache(maxsize=8)
def engines(url: str) -> tuple[Engine, Engine]:
    """(write engine, read engine) for a URL, created once per process (after any fork)."""
    return make_engine(url), make_engine(url, immediate=False)


def write_engine(url: str | None = None) -> Engine:
    return engines(url or database_url())[0]


def read_engine(url: str | None = None) -> Engine:
    return engines(url or database_url())[1]


@contextmanager
def write_session(engine: Engine | None = None) -> Iterator[Session]:
    """A short write transaction: commits on success, rolls back on error."""
    with Session(engine or write_engine(), expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine | None = None) -> Iterator[Session]:
    with Session(engine or read_engine(), expire_on_commit=False) as session, session.begin():
        yield session
