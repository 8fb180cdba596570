"""Benchmarks of the queued system: enqueue→start latency, recorder throughput, queue overhead of a DAG."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _redis_url() -> str:
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11")
    redis.Redis.from_url(url).ping()
    return url


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def queue_latency(quick: bool = False) -> dict:
    """Enqueue → job start with an idle forking worker, one job at a time (RQ timestamps, same clock)."""
    import redis

    from workers.queues import fetch_job, queue

    url = _redis_url()
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--queues", "bench"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": url, "ALIGNLAB_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        q = queue("bench", conn)
        time.sleep(2)  # the worker is up and idle
        latencies = []
        for _ in range(5 if quick else 60):
            job = q.enqueue_call("workers.jobs.ping_job", args=(time.time(),), timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                fetched = fetch_job(job.id, conn)
                if fetched.get_status(refresh=True) == "finished":
                    break
                time.sleep(0.005)
            latencies.append((fetched.started_at - fetched.enqueued_at).total_seconds())
            time.sleep(0.2)  # idle again
    finally:
        worker.terminate()
        worker.wait(30)
        conn.flushdb()
    p50, p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
    return {
        "n": len(latencies),
        "p50_s": p50,
        "p95_s": p95,
        "goal": "p95 ≤ 1 s",
        "met": p95 <= 1.0,
        "summary": f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms over {len(latencies)} jobs",
    }


def recorder_throughput(quick: bool = False) -> dict:
    """Events/s from the Redis stream into a fresh SQLite file (batched transactions, idempotent ids)."""
    import redis

    from db.migrate import upgrade
    from db.models import Run, StageRun
    from db.session import make_engine, write_session
    from workers.events import STREAM
    from workers.recorder import Recorder

    url = _redis_url()
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    n = 2000 if quick else 50000
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/bench.db"
        upgrade(db_url)
        engine = make_engine(db_url)
        with write_session(engine) as s:
            run = Run(name="bench", spec={}, spec_hash="x", status="running")
            s.add(run)
            s.flush()
            stage = StageRun(run_id=run.id, node="train_sft", stage="train_sft", status="running")
            s.add(stage)
            s.flush()
            run_id, stage_id = run.id, stage.id
        import json

        pipe = conn.pipeline(transaction=False)
        for i in range(n):
            event = {
                "event_id": f"bench:{i}",
                "kind": "metric",
                "run_id": run_id,
                "stage_run_id": stage_id,
                "time": time.time(),
                "payload": {"step": i, "values": {"loss": 1.0 / (i + 1)}},
            }
            pipe.xadd(STREAM, {"event": json.dumps(event)})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        recorder = Recorder(conn, engine, batch_size=1000)
        started = time.perf_counter()
        recorded = recorder.drain()
        seconds = time.perf_counter() - started
        engine.dispose()
    conn.flushdb()
    rate = recorded / seconds
    return {
        "events": recorded,
        "seconds": seconds,
        "events_per_s": rate,
        "goal": "≥ 5,000 events/s",
        "met": rate >= 5000,
        "summary": f"{rate:,.0f} events/s ({recorded} events in {seconds:.2f} s)",
    }


def orchestration(quick: bool = False) -> dict:
    """The same tiny DAG queued (`alignlab up`: embedded Redis, recorder, worker) vs in one process."""
    from pipeline.tiny import ensure_tiny

    stages = "[generate_sft, train_sft]" if quick else None
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ensure_tiny(Path(tmp) / "shared-models")
        times = {}
        for mode in ("direct", "queued"):
            home = Path(tmp) / mode
            shutil.copytree(tiny, home / "models" / tiny.name)
            env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
            env["ALIGNLAB_HOME"] = str(home)
            command = (
                [sys.executable, "-m", "pipeline", "run", "--preset", "tiny-ci"]
                if mode == "direct"
                else [sys.executable, "-m", "workers.cli", "up", "--preset", "tiny-ci", "--exit-when-done"]
            )
            if stages:
                command += ["--stages", stages]
            started = time.perf_counter()
            subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[mode] = time.perf_counter() - started
            if mode == "queued":  # the run itself: submit to its last stage recorded, services already up
                times["queued_run"] = _run_seconds(home / "alignlab.db")
    ratio = times["queued_run"] / times["direct"]
    with_startup = times["queued"] / times["direct"]
    return {
        **times,
        "ratio": ratio,
        "ratio_with_startup": with_startup,
        "goal": "≤ 1.15×",
        "met": ratio <= 1.15,
        "summary": f"queued run {times['queued_run']:.1f} s vs direct {times['direct']:.1f} s = {ratio:.2f}× "
        f"({times['queued']:.1f} s = {with_startup:.2f}× counting `alignlab up` start and stop)",
    }


def _run_seconds(db_path: Path) -> float:
    from datetime import datetime

    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{db_path}")
    with engine.connect() as connection:
        created, finished = connection.execute(text("SELECT created_at, finished_at FROM runs")).one()
    engine.dispose()
    return (datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(created))).total_seconds()


__all__ = ["queue_latency", "recorder_throughput", "orchestration"]
