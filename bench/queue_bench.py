"""Benchmarks of the queued system: enqueue→start latency, recorder throughput, queue overhead of a DAG."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


DIRECT_DAG = """
import json, sys, time
from workers.worker import preload
preload()  # the same imports a worker makes before it forks: both sides start warm
from pipeline.core.configs import preset, from_dict, to_dict, RunSpec
from pipeline.dag import run_dag
data = to_dict(preset("tiny-ci"))
data["split"]["seed"] = int(sys.argv[1])
if len(sys.argv) > 2:
    data["stages"] = json.loads(sys.argv[2])
spec = from_dict(RunSpec, data)
started = time.perf_counter()
run_dag(spec)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def _wait_for_worker(home: Path, env: dict[str, str], timeout: float = 300) -> None:
    """Until `alignlab up` has a worker registered in Redis (it registers after its imports, before any job)."""
    import redis
    from rq import Worker

    from workers.queues import embedded_socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        socket = embedded_socket(home)
        if socket.exists():
            try:
                if Worker.all(connection=redis.Redis(unix_socket_path=str(socket))):
                    return
            except redis.ConnectionError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"no worker registered under {home} within {timeout:.0f} s")


def _latest_run(db_path: Path) -> tuple[int, str, Any, Any] | None:
    """(id, status, created_at, finished_at) of the newest run in the SQLite store, None before there is one."""
    from sqlalchemy import create_engine, text

    if not db_path.exists():
        return None
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT id, status, created_at, finished_at FROM runs ORDER BY id DESC LIMIT 1")
            ).one_or_none()
    except Exception:  # noqa: BLE001 - the schema is still being created
        row = None
    finally:
        engine.dispose()
    return tuple(row) if row is not None else None


def _queued_seconds(db_path: Path, after_run: int, timeout: float = 900) -> float:
    """Created → finished of the first run newer than `after_run`, once it has succeeded."""
    from datetime import datetime

    from db.models import RunStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = _latest_run(db_path)
        if latest is not None and latest[0] > after_run and RunStatus(latest[1]).final:
            assert latest[1] == "succeeded", f"the queued run {latest[1]}"
            created, finished = (datetime.fromisoformat(str(t)) for t in latest[2:])
            return (finished - created).total_seconds()
        time.sleep(0.2)
    raise RuntimeError(f"the queued run did not finish within {timeout:.0f} s")


def orchestration(quick: bool = False, repeats: int = 3) -> dict:
    """The tiny DAG queued vs in one process, both warm, alternated `repeats` times (split seed 0, 1, …: new
    artifacts each time, the same work): in-process is `run_dag` in a fresh process after the worker's own
    imports; queued is submit → last stage recorded, with `alignlab up` (embedded Redis, recorder, worker) already
    up. The ratio is the median of the pairs' ratios: on a shared 2-core machine one pair alone swings by ±30%."""
    import json
    import signal
    import statistics

    from pipeline.tiny import ensure_tiny

    stages = ["generate_sft", "train_sft"] if quick else None
    repeats = 1 if quick else repeats
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ensure_tiny(Path(tmp) / "shared-models")
        queued_home = Path(tmp) / "queued"
        shutil.copytree(tiny, queued_home / "models" / tiny.name)
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env = {**base, "ALIGNLAB_HOME": str(queued_home)}
        started = time.perf_counter()
        up = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pairs = []
        try:
            _wait_for_worker(queued_home, env)
            startup = time.perf_counter() - started
            for seed in range(repeats):
                direct_home = Path(tmp) / f"direct-{seed}"
                shutil.copytree(tiny, direct_home / "models" / tiny.name)
                command = [sys.executable, "-c", DIRECT_DAG, str(seed)] + ([json.dumps(stages)] if stages else [])
                direct_env = {**base, "ALIGNLAB_HOME": str(direct_home)}
                out = subprocess.run(command, cwd=ROOT, env=direct_env, check=True, capture_output=True, text=True)
                direct = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]

                before = (_latest_run(queued_home / "alignlab.db") or (0,))[0]
                submit = [
                    sys.executable,
                    "-m",
                    "workers.cli",
                    "submit",
                    "--preset",
                    "tiny-ci",
                    "--split.seed",
                    str(seed),
                ]
                submit += ["--stages", json.dumps(stages)] if stages else []
                subprocess.run(submit, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
                pairs.append((direct, _queued_seconds(queued_home / "alignlab.db", before)))
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(120)
    ratio = statistics.median(queued / direct for direct, queued in pairs)
    shown = ", ".join(f"{queued:.1f} vs {direct:.1f} s" for direct, queued in pairs)
    return {
        "pairs": [{"direct": direct, "queued_run": queued} for direct, queued in pairs],
        "services_startup": startup,
        "ratio": ratio,
        "goal": "≤ 1.10×",
        "met": ratio <= 1.10,
        "summary": f"queued run vs in-process, {len(pairs)} alternated pairs ({shown}): median {ratio:.2f}× (both "
        f"warm; starting `alignlab up` took {startup:.1f} s once)",
    }


__all__ = ["queue_latency", "recorder_throughput", "orchestration"]
