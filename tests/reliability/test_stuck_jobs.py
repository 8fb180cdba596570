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


def test_sigterm_at_gradient_accumulation_16_checkpoints_after_the_current_micro_batch(
    dag_run, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home, tmp_path
):
    """RunPod kills a pod 5 s after SIGTERM. The stop is taken after the micro-batch in progress, not after the
    whole optimizer step: a micro-batch of step 2 is held, SIGTERM arrives, the micro-batch is let go, and no further
    micro-batch may start (finishing the optimizer step would take 12 or more): a checkpoint of step 1 is saved and
    the worker is out within 5 s."""
    from tests.reliability.test_faults import long_sft_spec

    steps, gate = tmp_path / "steps.log", tmp_path / "gate"
    spec = long_sft_spec(tiny_ci_spec, "preempted-accumulating", max_steps=40)
    spec.sft.seed = 41  # its own artifact key
    spec.sft.grad_accumulation = 16
    spec.sft.checkpoint_every = 1000  # no periodic checkpoint: the one saved at SIGTERM is what resume uses
    spec.execution.retries = 0
    scheduler.submit(spec, redis_conn, sqlite_engine)
    env = {
        "REDIS_URL": redis_server_url,
        "ALIGNLAB_HOME": str(alignlab_home),
        "ALIGNLAB_TEST_STEPS": str(steps),
        "ALIGNLAB_TEST_GATE": str(gate),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.gated_step_worker", "--queues", "gpu,cpu", "--job-process", "fork"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # past the first optimizer step and into the second, mid-accumulation
        wait_for(lambda: steps.exists() and steps.read_text().count("start 1\n") >= 3, 900, "step 2 under way")
        gate.touch()
        wait_for(lambda: "held" in steps.read_text(), 60, "a micro-batch held")
        worker.send_signal(signal.SIGTERM)
        from workers.events import preempt_key

        wait_for(lambda: any(redis_conn.scan_iter(preempt_key("*"))), 60, "the worker to flag its preemption")
        started_before = steps.read_text().count("start ")
        let_go = time.monotonic()
        gate.unlink()
        worker.wait(120)
        out_after = time.monotonic() - let_go
        started_after = steps.read_text().count("start ") - started_before
    finally:
        gate.unlink(missing_ok=True)
        if worker.poll() is None:
            kill_tree(worker)
    assert started_after == 0, f"{started_after} micro-batches started after the stop (it waited for the step)"
    saved = [p for p in alignlab_home.rglob("checkpoint-1") if p.stat().st_mtime >= time.time() - out_after - 60]
    assert saved, "no checkpoint of the last completed step was saved"
    assert out_after < 5.0, f"the worker took {out_after:.1f} s to checkpoint and exit after its last micro-batch"
    print(f"FIGURE SIGTERM at grad accumulation 16: out {out_after:.1f} s after the micro-batch in progress")
