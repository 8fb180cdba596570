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
    """The tiny DAG queued vs in one process, all warm, alternated `repeats` times (split seed 0, 1, …: new
    artifacts each time, the same work): in-process is `run_dag` in a fresh process after the worker's own
    imports; queued is submit → last stage recorded, with `alignlab up` (embedded Redis, recorder, worker) already
    up, twice side by side: `up`'s own worker, which runs its jobs in its own process (`reuse`, the goal's), and a
    pod's worker, a fresh forked process per job (`fork`, reported). A ratio is the median of the pairs' ratios: on
    a shared 2-core machine one pair alone swings by ±30%."""
    import json
    import signal
    import statistics

    from pipeline.tiny import ensure_tiny

    stages = ["generate_sft", "train_sft"] if quick else None
    repeats = 1 if quick else repeats
    job_processes = ("reuse", "fork")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ensure_tiny(Path(tmp) / "shared-models")
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        homes, envs, ups, startup = {}, {}, [], {}
        pairs: dict[str, list[tuple[float, float]]] = {job_process: [] for job_process in job_processes}
        try:
            for job_process in job_processes:
                home = homes[job_process] = Path(tmp) / f"queued-{job_process}"
                shutil.copytree(tiny, home / "models" / tiny.name)
                started = time.perf_counter()
                command = [sys.executable, "-m", "workers.cli", "up", "--job-process", job_process]
                command += ["--port", str(_free_port())]
                env = envs[job_process] = {**base, "ALIGNLAB_HOME": str(home)}
                quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                ups.append(subprocess.Popen(command, cwd=ROOT, env=env, **quiet))
                _wait_for_worker(home, env)
                startup[job_process] = time.perf_counter() - started
            for seed in range(repeats):
                direct_home = Path(tmp) / f"direct-{seed}"
                shutil.copytree(tiny, direct_home / "models" / tiny.name)
                command = [sys.executable, "-c", DIRECT_DAG, str(seed)] + ([json.dumps(stages)] if stages else [])
                direct_env = {**base, "ALIGNLAB_HOME": str(direct_home)}
                out = subprocess.run(command, cwd=ROOT, env=direct_env, check=True, capture_output=True, text=True)
                direct = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
                for job_process, home in homes.items():
                    before = (_latest_run(home / "alignlab.db") or (0,))[0]
                    submit = [sys.executable, "-m", "workers.cli", "submit", "--preset", "tiny-ci"]
                    submit += ["--split.seed", str(seed)] + (["--stages", json.dumps(stages)] if stages else [])
                    subprocess.run(submit, cwd=ROOT, env=envs[job_process], check=True, stdout=subprocess.DEVNULL)
                    pairs[job_process].append((direct, _queued_seconds(home / "alignlab.db", before)))
        finally:
            for up in ups:
                up.send_signal(signal.SIGINT)
            for up in ups:
                up.wait(120)
    ratios = {
        job_process: statistics.median(queued / direct for direct, queued in measured)
        for job_process, measured in pairs.items()
    }
    shown = {
        job_process: ", ".join(f"{queued:.1f} vs {direct:.1f} s" for direct, queued in measured)
        for job_process, measured in pairs.items()
    }
    return {
        "pairs": {
            job_process: [{"direct": direct, "queued_run": queued} for direct, queued in measured]
            for job_process, measured in pairs.items()
        },
        "services_startup": startup,
        "ratio": ratios["reuse"],
        "ratio_fork": ratios["fork"],
        "goal": "≤ 1.10× (alignlab up's worker)",
        "met": ratios["reuse"] <= 1.10,
        "summary": f"queued run vs in-process, {repeats} alternated pairs: `alignlab up`'s worker (jobs in its own "
        f"process) {shown['reuse']}: median {ratios['reuse']:.2f}×; a pod's forking worker (a process per job) "
        f"{shown['fork']}: median {ratios['fork']:.2f}× (all warm; starting `alignlab up` took "
        f"{startup['reuse']:.1f} s once)",
    }


def _wait_on(condition, timeout: float, what: str, interval: float = 1.0, every=None) -> None:
    """Until `condition()` holds (`every()` called at each look, e.g. to sample the workers), or RuntimeError."""
    deadline = time.monotonic() + timeout
    while not condition():
        if every is not None:
            every()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def soak(quick: bool = False) -> dict:
    """100 tiny-ci DAGs (10 with --quick) submitted at once to `alignlab up` (embedded Redis, recorder, a worker)
    and two more workers on the same Redis: 3 workers, one queue set. The runs cycle through 4 split seeds, so 4
    DAGs compute and the rest reuse their artifacts, often while the first is still writing them (identical nodes
    race on different workers). Afterwards, from the database: runs stuck (not final), lost (failed), stage rows
    duplicated, stages run twice (attempt > 1); the queue wait of every stage (runnable → started) and the share of
    the time each worker was busy."""
    import redis
    from rq import Worker
    from sqlalchemy import func, select

    from db.models import Metric, Run, Sample, StageRun
    from db.session import make_engine, read_session
    from pipeline.core.configs import preset
    from pipeline.core.registry import plan
    from pipeline.tiny import ensure_tiny
    from workers import scheduler
    from workers.queues import embedded_socket

    runs, seeds = (10, 2) if quick else (100, 4)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        tiny = ensure_tiny(Path(tmp) / "models")
        shutil.copytree(tiny, home / "models" / tiny.name)
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env["ALIGNLAB_HOME"] = str(home)
        log = open(Path(tmp) / "soak.log", "w")  # noqa: SIM115 - closed below
        up = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up", "--queues", "gpu,cpu", "--port", str(_free_port())],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        extra: list[subprocess.Popen] = []
        busy: dict[str, list[int]] = {}
        try:
            _wait_for_worker(home, env)
            extra = [
                subprocess.Popen(
                    [sys.executable, "-m", "workers", "--queues", "gpu,cpu", "--name", f"soak-{k}"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                for k in (1, 2)
            ]
            connection = redis.Redis(unix_socket_path=str(embedded_socket(home)))
            _wait_on(lambda: len(Worker.all(connection=connection)) == 3, 300, "three workers registered")
            os.environ["ALIGNLAB_HOME"] = str(home)
            engine = make_engine(f"sqlite:///{home / 'alignlab.db'}")
            started = time.perf_counter()
            for i in range(runs):
                spec = preset("tiny-ci")
                spec.name, spec.split.seed = f"soak-{i}", i % seeds
                scheduler.submit(spec, connection, engine)
            submitted_s = time.perf_counter() - started

            def sample_workers() -> None:
                for worker in Worker.all(connection=connection):
                    busy.setdefault(worker.name, []).append(int(worker.get_state() == "busy"))

            def all_final() -> bool:
                with read_session(engine) as s:
                    return not s.scalar(
                        select(func.count()).select_from(Run).where(Run.status.in_(("queued", "running")))
                    )

            _wait_on(all_final, 3600, f"{runs} soak runs final", every=sample_workers)
            wall_s = time.perf_counter() - started
            with read_session(engine) as s:
                statuses = dict(s.execute(select(Run.status, func.count()).group_by(Run.status)).all())
                columns = (StageRun.run_id, StageRun.node, StageRun.queued_at, StageRun.started_at)
                stages = s.execute(select(*columns, StageRun.finished_at, StageRun.attempt)).all()
                duplicated_metrics = s.scalar(
                    select(func.count()).select_from(
                        select(Metric.stage_run_id, Metric.step, Metric.name)
                        .group_by(Metric.stage_run_id, Metric.step, Metric.name)
                        .having(func.count() > 1)
                        .subquery()
                    )
                )
                duplicated_samples = s.scalar(
                    select(func.count()).select_from(
                        select(Sample.run_id, Sample.method, Sample.prompt_id)
                        .group_by(Sample.run_id, Sample.method, Sample.prompt_id)
                        .having(func.count() > 1)
                        .subquery()
                    )
                )
            engine.dispose()
        finally:
            for worker in extra:
                worker.terminate()
            up.terminate()
            for proc in [*extra, up]:
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    deps = {node.name: [dep for _, dep in node.deps] for node in plan()}
    by_run: dict[int, dict[str, Any]] = {}
    for stage in stages:
        by_run.setdefault(stage.run_id, {})[stage.node] = stage
    waits = []
    for nodes in by_run.values():
        for stage in nodes.values():
            if stage.started_at is None or stage.queued_at is None:
                continue
            upstream = [nodes[d].finished_at for d in deps[stage.node] if d in nodes and nodes[d].finished_at]
            waits.append((stage.started_at - max([stage.queued_at, *upstream])).total_seconds())
    stuck = sum(n for status, n in statuses.items() if status in ("queued", "running"))
    lost = statuses.get("failed", 0) + statuses.get("cancelled", 0)
    twice = sum(1 for s in stages if s.attempt > 1)
    busy_share = {name: sum(samples) / len(samples) for name, samples in busy.items() if samples}
    p95 = _percentile(waits, 0.95) if waits else float("nan")
    return {
        "runs": runs,
        "distinct_dags": seeds,
        "workers": 3,
        "statuses": statuses,
        "stuck": stuck,
        "lost": lost,
        "duplicated_rows": duplicated_metrics + duplicated_samples,
        "stages_run_twice": twice,
        "queue_wait_p50_s": _percentile(waits, 0.5) if waits else None,
        "queue_wait_p95_s": p95,
        "busy_share": busy_share,
        "submit_s": submitted_s,
        "wall_s": wall_s,
        "goal": "0 stuck, 0 lost, 0 duplicated rows; queue wait p95 and busy share reported",
        "met": stuck == 0 and lost == 0 and duplicated_metrics + duplicated_samples == 0,
        "summary": f"{runs} tiny-ci DAGs ({seeds} distinct, the rest reusing them) over 3 workers in "
        f"{wall_s / 60:.1f} min: {stuck} stuck, {lost} lost, {duplicated_metrics + duplicated_samples} duplicated "
        f"rows, {twice} stages run twice; queue wait p95 {p95:.1f} s; workers busy "
        + ", ".join(f"{share:.0%}" for share in sorted(busy_share.values(), reverse=True)),
    }


def _free_port() -> int:
    from bench.common import free_port

    return free_port()


__all__ = ["queue_latency", "recorder_throughput", "orchestration", "soak"]
