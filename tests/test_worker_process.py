"""How a worker runs its jobs: each in a fresh forked process (`ForkingWorker`), or one after another in its own
process (`ReusingWorker`), which then answers for what a fork would have ended: models left in memory, a job stuck
past its timeout."""

import os
import threading
import time
from types import SimpleNamespace

from pipeline.core.configs import ModelConfig
from workers import worker as worker_module
from workers.queues import fetch_job, queue
from workers.worker import EXIT_HOLDING_MODELS, ForkingWorker, ReusingWorker, main, make_worker


def enqueue_pings(conn, n: int) -> list:
    return [queue("cpu", conn).enqueue_call("workers.jobs.ping_job", args=(time.time(),), timeout=30) for _ in range(n)]


def pids(conn, jobs) -> list[int]:
    return [fetch_job(job.id, conn).return_value()["pid"] for job in jobs]


def test_a_reusing_worker_runs_its_jobs_in_its_own_process_and_a_forking_worker_each_in_a_fresh_one(redis_conn):
    jobs = enqueue_pings(redis_conn, 2)
    make_worker(["cpu"], redis_conn, worker_class=ReusingWorker).work(burst=True)
    assert pids(redis_conn, jobs) == [os.getpid(), os.getpid()]

    jobs = enqueue_pings(redis_conn, 2)
    make_worker(["cpu"], redis_conn, worker_class=ForkingWorker).work(burst=True)
    forked = pids(redis_conn, jobs)
    assert os.getpid() not in forked and forked[0] != forked[1]


def test_a_model_a_job_leaves_in_memory_stops_a_reusing_worker_before_the_next_job(
    redis_conn, tiny_model_dir, monkeypatch
):
    from pipeline.models import load_model
    from workers import jobs

    config = ModelConfig(name_or_path=str(tiny_model_dir))
    leaked = []

    def leaking_ping(sent_at: float) -> dict:  # a job that keeps its model past its end
        leaked.append(load_model(config))
        return {"sent_at": sent_at}

    first, second = enqueue_pings(redis_conn, 2)
    ping_job = jobs.ping_job
    monkeypatch.setattr(jobs, "ping_job", leaking_ping)
    assert main(["--queues", "cpu", "--burst", "--no-preload", "--job-process", "reuse"]) == EXIT_HOLDING_MODELS
    assert fetch_job(first.id, redis_conn).get_status(refresh=True) == "finished"
    assert fetch_job(second.id, redis_conn).get_status(refresh=True) == "queued"  # left for a fresh process

    # a model that was in memory before the job (the caller's own) is not the job's doing
    monkeypatch.setattr(jobs, "ping_job", ping_job)
    leaked.clear()
    callers_own = load_model(config)
    assert main(["--queues", "cpu", "--burst", "--no-preload", "--job-process", "reuse"]) == 0
    assert fetch_job(second.id, redis_conn).get_status(refresh=True) == "finished"
    del callers_own  # held through the worker's job above


class HeartbeatProbe:
    """Counts the heartbeat loop's beats and its overdue kills instead of beating Redis or killing anything."""

    job_monitoring_interval = 0.05

    def __init__(self):
        self.beats = 0
        self.killed = threading.Event()

    def maintain_heartbeats(self, job, execution):
        self.beats += 1

    def kill_overdue_job(self, job):
        self.killed.set()


def beat_until(probe, job, condition) -> None:
    stop = threading.Event()
    beating = threading.Thread(target=probe._job_heartbeats, args=(job, None, stop), daemon=True)
    beating.start()
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    beating.join(30)
    assert condition(), "the heartbeat loop did not get there within 60 s"


def test_a_job_stuck_past_its_timeout_is_ended_by_a_reusing_worker_and_left_to_a_forking_workers_parent(
    monkeypatch,
):
    monkeypatch.setattr(worker_module, "OVERDUE_KILL_AFTER_S", 0)
    stuck = SimpleNamespace(id="stuck", timeout=0.01)

    reusing = type("ReusingProbe", (HeartbeatProbe, ReusingWorker), {})
    probe = reusing.__new__(reusing)
    HeartbeatProbe.__init__(probe)
    beat_until(probe, stuck, probe.killed.is_set)

    # a forked job's parent kills it (RQ's monitor): the job's own heartbeat loop only beats
    forking = type("ForkingProbe", (HeartbeatProbe, ForkingWorker), {})
    probe = forking.__new__(forking)
    HeartbeatProbe.__init__(probe)
    beat_until(probe, stuck, lambda: probe.beats >= 3)
    assert not probe.killed.is_set()
