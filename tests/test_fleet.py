"""The fleet: real workers publish their facts, `alignlab workers` lists them, a clean stop is not a loss, and a
worker gone silent is lost with its job's fate read from the database."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.test_cli_up import ROOT
from workers import fleet


def _start_worker(name: str, queues: str, env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "workers", "--queues", queues, "--no-preload", "--name", name],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _until(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _states(connection) -> dict[str, str]:
    return {view.name: view.state for view in fleet.fleet(connection)}


def test_workers_publish_their_facts_and_a_clean_stop_is_not_a_loss(redis_conn, redis_server_url, tmp_path, engine):
    env = {**os.environ, "REDIS_URL": redis_server_url, "DATABASE_URL": str(engine.url)}
    names = ["fleet-a", "fleet-b", "fleet-c"]
    with open(tmp_path / "workers.log", "w") as log:
        procs = {name: _start_worker(name, "fleet-test", env, log) for name in names}  # a queue no other test uses
        try:
            _until(lambda: set(_states(redis_conn)) == set(names), "three workers registered")
            views = {view.name: view for view in fleet.fleet(redis_conn)}
            for view in views.values():
                assert view.state == "idle"
                assert view.queues == ["fleet-test"]
                assert view.device == "cpu" and view.device_name == f"CPU, {os.cpu_count()} cores"
                assert 0 < view.memory_free_mib <= view.memory_total_mib
                assert view.alignlab and view.torch
                assert view.job_id is None

            out = subprocess.run(
                [sys.executable, "-m", "workers.cli", "workers"], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            assert lines[0].split()[:3] == ["worker", "state", "host"]
            listed = {line.split()[0]: line.split()[1] for line in lines[1:]}
            assert listed == dict.fromkeys(names, "idle")

            procs["fleet-a"].send_signal(signal.SIGTERM)  # a warm shutdown: stopped, never lost
            procs["fleet-a"].wait(60)
            assert _states(redis_conn)["fleet-a"] == "stopped"
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)


def _record(connection, name: str, seen_ago: float, job_id: str = "", state: str = "heartbeat") -> None:
    facts = {"name": name, "host": "pod-1", "queues": ["gpu"], "device": "cuda", "device_name": "NVIDIA H100"}
    facts |= {"memory_total_mib": 81559, "memory_free_mib": 80000, "alignlab": "0.1", "torch": "2.13.0"}
    connection.hset(
        fleet.facts_key(name),
        mapping={"facts": json.dumps(facts), "state": state, "seen_at": time.time() - seen_ago, "job_id": job_id},
    )


def test_a_silent_worker_is_lost_and_its_job_fate_comes_from_the_database(redis_conn, engine):
    from db.models import StageRun
    from db.session import write_session
    from tests.conftest import add_stage_run

    run_id, stage_run_id = add_stage_run(engine, "train_sft", "failed")
    with write_session(engine) as s:
        s.get(StageRun, stage_run_id).rq_job_id = "alignlab-1-train_sft-1"
    # no RQ worker key: the worker vanished; its own record says what it was running at its last heartbeat
    _record(redis_conn, "pod-gone", seen_ago=fleet.LOST_AFTER_S + 5, job_id="alignlab-1-train_sft-1")
    _record(redis_conn, "pod-stopped", seen_ago=600, state="stopped")

    rows = {row["worker"]: row for row in fleet.fleet_table(redis_conn)}
    assert rows["pod-gone"]["state"] == "lost"
    assert rows["pod-gone"]["job"] == f"run {run_id} · train_sft (failed): resumable (Resume run {run_id})"
    assert rows["pod-gone"]["memory"] == "78.1 of 79.6 GiB free"
    assert rows["pod-gone"]["jobs done"] == "–"  # RQ's counters went with its worker key
    assert rows["pod-stopped"]["state"] == "stopped" and rows["pod-stopped"]["job"] == "–"
    assert list(rows) == ["pod-gone", "pod-stopped"]  # lost before stopped
