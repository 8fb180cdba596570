"""A job stuck in one call (no progress report, so the cooperative cancel never fires) still ends within seconds
of a cancel, on both kinds of worker; a worker's helper processes die with it; a job's memory is bounded."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.reliability.test_faults import (
    RecorderThread,
    kill_tree,
    stage,
    wait_for,
    work_horses,
)
from tests.test_cli_up import ROOT
from workers import commands, scheduler
from workers.worker import CANCEL_GRACE_S, JOB_PROCESSES, WATCH_INTERVAL_S, ForkingWorker


def start_stuck_worker(env_extra, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stuck_worker", "--queues", "gpu,cpu", "--no-preload", *args],
        cwd=ROOT,
        env={**os.environ, **env_extra},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.parametrize("job_process", sorted(JOB_PROCESSES))
def test_cancel_ends_a_job_stuck_in_one_call_within_seconds(
    job_process, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home
):
    spec = tiny_ci_spec.model_copy(deep=True)
    spec.name = f"stuck-{job_process}"
    run_id = scheduler.submit(spec, redis_conn, sqlite_engine)
    worker = start_stuck_worker(
        {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}, "--job-process", job_process
    )
    try:
        with RecorderThread(redis_conn, sqlite_engine):
            wait_for(lambda: stage(sqlite_engine, run_id, "split").status == "running", 300, "split running")
            forking = JOB_PROCESSES[job_process] is ForkingWorker
            job_process_of = wait_for(lambda: work_horses(worker), 30, "the work horse")[0] if forking else None
            helpers = psutil.Process(worker.pid).children(recursive=True)
            cancelled_at = time.monotonic()
            commands.cancel(run_id, redis_conn, sqlite_engine)
            if forking:  # the horse goes; the worker stays for the next job
                psutil.wait_procs([job_process_of], timeout=120)
                assert not job_process_of.is_running()
                assert worker.poll() is None
            else:  # the job's process is the worker: it goes, and its scheduler child with it
                worker.wait(120)
                psutil.wait_procs(helpers, timeout=30)
                assert not [p for p in helpers if p.is_running()], "a helper outlived its worker"
            ended_after = time.monotonic() - cancelled_at
        # the promise: within seconds (the grace, a watch interval, and room for a busy machine)
        assert ended_after < CANCEL_GRACE_S + WATCH_INTERVAL_S + 30, ended_after
        assert commands.run_summary(run_id, sqlite_engine)["status"] == "cancelled"
        print(f"FIGURE {job_process}: a job stuck in one call ended {ended_after:.1f} s after cancel")
    finally:
        if worker.poll() is None:
            kill_tree(worker)


def test_a_killed_worker_leaves_no_scheduler_behind(redis_conn, redis_server_url, alignlab_home):
    worker = start_stuck_worker(
        {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}, "--job-process", "reuse"
    )
    try:
        helpers = wait_for(lambda: psutil.Process(worker.pid).children(recursive=True), 120, "the scheduler child")
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
    gone, alive = psutil.wait_procs(helpers, timeout=30)
    assert not alive, f"{[p.pid for p in alive]} outlived their SIGKILLed worker"


BOMB = """
import sys
from workers.memory_limit import JobMemoryLimit, MIB
limit = JobMemoryLimit(512 * MIB, enforce_address_space=True)
with limit.applied():
    try:
        prompt = "{instruction:>8000000000}".format(instruction="x")  # the template bomb: an 8 GB string
    except MemoryError:
        sys.exit(42)
sys.exit(0)
"""


def test_a_template_bomb_under_the_job_memory_limit_fails_alone(tmp_path):
    """What a `{instruction:>8000000000}` template (refused by validation now) did to a worker: under the job's
    memory limit the allocation fails at once and the process carries on, instead of growing to the kernel's
    out-of-memory killer."""
    proc = subprocess.Popen([sys.executable, "-c", BOMB], cwd=ROOT)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert proc.wait(120) == 42
    assert peak < 2 * 1024**3, f"grew to {peak / 1024**3:.1f} GiB"
