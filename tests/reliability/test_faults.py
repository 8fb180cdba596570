"""Faults against real processes: a killed worker, a cancelled job, a killed recorder, concurrent writers."""

import copy
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from sqlalchemy import func, select

from db.models import Metric, RecordedEvent, Run, RunStatus, StageRun
from db.session import make_engine, read_session
from tests.conftest import add_stage_run
from workers import commands, scheduler
from workers.recorder import Recorder
from workers.worker import JOB_PROCESSES, ForkingWorker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_worker(env_extra, *args):
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, "-m", "workers", "--queues", "gpu,cpu", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_tree(proc):
    """SIGKILL a worker and its work horse (the horse sits in its own process group): a pod dying."""
    children = psutil.Process(proc.pid).children(recursive=True)
    horses = work_horses(proc)
    for p in [psutil.Process(proc.pid), *children]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(10)
    return horses


def work_horses(worker):
    """The worker's forked job processes: RQ's horse leads its own process group (the scheduler child does not)."""
    horses = []
    for child in psutil.Process(worker.pid).children():
        try:
            if os.getpgid(child.pid) == child.pid:
                horses.append(child)
        except ProcessLookupError:
            pass
    return horses


class RecorderThread:
    def __init__(self, conn, engine):
        self.stop = threading.Event()
        self.recorder = Recorder(conn, engine, consumer="test-recorder", block_ms=200)
        self.thread = threading.Thread(target=self.recorder.run_forever, args=(self.stop, 2.0), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def wait_for(predicate, timeout, what, poll=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stage(engine, run_id, node):
    with read_session(engine) as s:
        return s.scalars(select(StageRun).where(StageRun.run_id == run_id, StageRun.node == node)).one()


def loss_steps(engine, stage_run) -> list[int]:
    """The steps of a stage's recorded loss curve, in order (duplicates kept, so a double record shows)."""
    with read_session(engine) as s:
        return list(
            s.scalars(
                select(Metric.step)
                .where(Metric.stage_run_id == stage_run.id, Metric.name == "loss")
                .order_by(Metric.step)
            )
        )


def long_sft_spec(tiny_ci_spec, name, max_steps=-1):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.name = name
    spec.stages = ["generate_sft", "train_sft", "generate_negatives"]
    spec.sft.num_epochs = 80.0  # about a thousand steps: long enough to be killed mid-training
    spec.sft.max_steps = max_steps  # a test that must also finish the training caps it (a busy machine is slow)
    spec.sft.checkpoint_every = 5
    spec.sft.batch_size = 2
    return spec


@pytest.mark.parametrize("job_process", sorted(JOB_PROCESSES))
def test_killed_worker_fails_its_stage_and_resume_finishes_from_the_checkpoint(
    job_process, dag_run, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home
):
    """A pod dying: the worker and its job's process SIGKILLed (for a worker that runs its jobs in its own process,
    also what the kernel's OOM killer does to it)."""
    env = {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}
    spec = long_sft_spec(tiny_ci_spec, f"killed-worker-{job_process}", max_steps=60)
    spec.sft.seed = {"fork": 31, "reuse": 37}[job_process]  # its own artifact key
    run_id = scheduler.submit(spec, redis_conn, sqlite_engine)
    worker = start_worker(env, "--job-process", job_process)
    with RecorderThread(redis_conn, sqlite_engine):

        def trained_some_steps():
            with read_session(sqlite_engine) as s:
                sr = s.scalars(select(StageRun).where(StageRun.run_id == run_id, StageRun.node == "train_sft")).one()
                steps = s.scalar(select(func.max(Metric.step)).where(Metric.stage_run_id == sr.id))
            return sr.status == "running" and (steps or 0) >= 12

        wait_for(trained_some_steps, 600, "train_sft to pass step 12")
        horses = kill_tree(worker)
        # the job ran in a forked child, or in the worker's own process
        assert bool(horses) == (JOB_PROCESSES[job_process] is ForkingWorker), horses
        # the reconciler calls a worker dead after 30 s without a heartbeat; 180 s leaves room for a busy machine
        wait_for(lambda: stage(sqlite_engine, run_id, "train_sft").status == "failed", 180, "train_sft to be failed")
        failed = stage(sqlite_engine, run_id, "train_sft")
        assert "stopped heartbeating" in failed.error
        resumed_nodes = scheduler.resume(run_id, redis_conn, sqlite_engine).enqueued
        # negatives (independent of train_sft) may have run before the kill, or be waiting in the queue
        assert resumed_nodes[0] == "train_sft" and set(resumed_nodes) <= {"train_sft", "negatives"}
        worker = start_worker(env, "--burst", "--job-process", job_process)
        worker.wait(1200)
        wait_for(
            lambda: stage(sqlite_engine, run_id, "train_sft").status in ("succeeded", "failed"), 60, "resumed train_sft"
        )
        resumed = stage(sqlite_engine, run_id, "train_sft")
        assert resumed.status == "succeeded", resumed.error
        wait_for(
            lambda: stage(sqlite_engine, run_id, "negatives").status in ("succeeded", "cached", "failed"),
            60,
            "negatives",
        )
        assert stage(sqlite_engine, run_id, "negatives").status in ("succeeded", "cached"), stage(
            sqlite_engine, run_id, "negatives"
        ).error
    resumed = stage(sqlite_engine, run_id, "train_sft")
    assert resumed.attempt == 2 and resumed.metrics["resumed_from"].startswith("checkpoint-")
    # every step exactly once: points recomputed after the checkpoint replaced, nothing recorded twice
    assert loss_steps(sqlite_engine, resumed) == list(range(1, resumed.metrics["steps"] + 1))
    with read_session(sqlite_engine) as s:
        assert s.get(Run, run_id).status == "succeeded"
        assert s.scalar(select(func.count(RecordedEvent.event_id))) == s.scalar(
            select(func.count(func.distinct(RecordedEvent.event_id)))
        )


@pytest.mark.parametrize("job_process", sorted(JOB_PROCESSES))
def test_cancel_stops_the_running_job_and_statuses_agree(
    job_process, dag_run, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home
):
    from rq.job import JobStatus

    from workers.queues import fetch_job

    env = {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}
    spec = long_sft_spec(tiny_ci_spec, f"cancelled-{job_process}")
    spec.sft.seed = {"fork": 5, "reuse": 7}[job_process]  # its own artifact key
    run_id = scheduler.submit(spec, redis_conn, sqlite_engine)
    worker = start_worker(env, "--job-process", job_process)
    try:
        with RecorderThread(redis_conn, sqlite_engine):
            wait_for(lambda: stage(sqlite_engine, run_id, "train_sft").status == "running", 600, "train_sft running")
            if JOB_PROCESSES[job_process] is ForkingWorker:
                horses = wait_for(lambda: work_horses(worker), 30, "the work horse")
                commands.cancel(run_id, redis_conn, sqlite_engine)
                gone, alive = psutil.wait_procs(horses, timeout=120)
                assert not alive, "the job's process was still running 120 s after cancel"
            else:  # the job stops at its next progress report
                commands.cancel(run_id, redis_conn, sqlite_engine)
            job_id = stage(sqlite_engine, run_id, "train_sft").rq_job_id
            ended = (JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FAILED)
            wait_for(lambda: fetch_job(job_id, redis_conn).get_status(refresh=True) in ended, 120, "the job to end")
            assert worker.poll() is None  # the worker stays for the next job (the one that ran it, too)
            wait_for(lambda: stream_done(redis_conn), 60, "the recorder to take in the job's last events")
        with read_session(sqlite_engine) as s:
            run = s.get(Run, run_id)
            assert run.status == "cancelled"
            statuses = {x.node: x.status for x in run.stages}
            assert statuses["train_sft"] == "cancelled"  # negatives (independent of it) may have finished first
            assert all(x.status in ("succeeded", "cached", "cancelled") for x in run.stages)
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            kill_tree(worker)


def start_recorder(env):
    return subprocess.Popen(
        [sys.executable, "-m", "workers.recorder"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stream_done(conn) -> bool:
    from workers.events import STREAM
    from workers.recorder import GROUP

    (group,) = [g for g in conn.xinfo_groups(STREAM) if g["name"].decode() == GROUP]
    return group["pending"] == 0 and group["lag"] == 0


def test_recorder_killed_mid_stream_loses_and_duplicates_nothing(redis_conn, redis_server_url, sqlite_engine, tmp_path):
    from workers.events import EventEmitter

    run_id, stage_run_id = add_stage_run(sqlite_engine)
    emitter = EventEmitter(redis_conn, run_id, stage_run_id)
    total = 20000
    for step in range(1, total + 1):
        emitter.emit("metric", step=step, values={"loss": 1.0 / step})
    # small batches so that the kill lands mid-stream
    env = {
        **os.environ,
        "REDIS_URL": redis_server_url,
        "DATABASE_URL": str(sqlite_engine.url),
        "ALIGNLAB_RECORDER_BATCH": "50",
    }

    def recorded():
        with read_session(sqlite_engine) as s:
            return s.scalar(select(func.count()).select_from(Metric).where(Metric.stage_run_id == stage_run_id))

    recorder = start_recorder(env)
    wait_for(lambda: recorded() > 0, 60, "the recorder to start writing", poll=0.02)
    recorder.kill()
    recorder.wait(10)
    partial = recorded()
    assert 0 < partial < total, "kill the recorder mid-stream"
    recorder = start_recorder(env)
    try:
        wait_for(lambda: recorded() >= total, 120, "the restarted recorder to catch up")
        # and every entry acknowledged: nothing is left that could still arrive a second time
        wait_for(lambda: stream_done(redis_conn), 60, "the stream to be fully acknowledged")
    finally:
        recorder.terminate()
        recorder.wait(10)
    with read_session(sqlite_engine) as s:
        steps = s.scalars(select(Metric.step).where(Metric.stage_run_id == stage_run_id).order_by(Metric.step)).all()
    assert steps == list(range(1, total + 1))


WRITER = """
import os, sys, time, random
from sqlalchemy.exc import OperationalError
from db.models import Metric, Run, StageRun
from db.session import make_engine, write_session
engine = make_engine(sys.argv[1])
transactions = int(sys.argv[2])
locked = writes = 0
with write_session(engine) as s:
    run = Run(name=f"w{os.getpid()}", spec={}, spec_hash="x", status="running"); s.add(run); s.flush()
    sr = StageRun(run_id=run.id, node="train_sft", stage="train_sft"); s.add(sr); s.flush(); sid, rid = sr.id, run.id
step = 0
while writes + locked < transactions:
    try:
        with write_session(engine) as s:
            s.get(StageRun, sid).progress_done = step  # read then write: the deferred-BEGIN trap
            s.add_all(Metric(run_id=rid, stage_run_id=sid, step=step, name=f"loss{k}", value=random.random())
                      for k in range(20))
        writes += 1
    except OperationalError as exc:
        if "locked" in str(exc):
            locked += 1
        else:
            raise
    step += 1
print(writes, locked)
"""


def test_four_writers_and_a_reader_never_see_database_is_locked(sqlite_engine):
    url = str(sqlite_engine.url)
    per_writer = 300
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(per_writer)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    reads = read_errors = 0
    reader = make_engine(url, immediate=False)
    while any(w.poll() is None for w in writers):
        try:
            with read_session(reader) as s:
                s.scalar(select(func.count()).select_from(Metric))
                s.scalars(select(StageRun.progress_done)).all()
            reads += 1
        except Exception as exc:  # noqa: BLE001
            read_errors += 1
            print("read error", exc)
        time.sleep(0.01)
    outputs = [w.communicate() for w in writers]
    assert all(w.returncode == 0 for w in writers), [err[-2000:] for _, err in outputs]
    results = [out.split() for out, _ in outputs]
    writes = sum(int(r[0]) for r in results)
    locked = sum(int(r[1]) for r in results)
    assert locked == 0 and read_errors == 0 and reads >= 1
    assert writes == 4 * per_writer
    with read_session(reader) as s:  # every transaction landed, whole
        assert s.scalar(select(func.count()).select_from(Metric)) == 4 * per_writer * 20


@pytest.mark.parametrize("job_process", sorted(JOB_PROCESSES))
def test_sigterm_preemption_checkpoints_requeues_and_another_worker_resumes(
    job_process, dag_run, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home
):
    env = {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}
    spec = long_sft_spec(tiny_ci_spec, f"preempted-{job_process}", max_steps=60)
    spec.sft.seed = {"fork": 11, "reuse": 13}[job_process]  # its own artifact key
    spec.sft.checkpoint_every = 1000  # no periodic checkpoint: the one saved at SIGTERM is what resume uses
    spec.execution.retries = 0  # preemption requeues even when transient retries are off
    run_id = scheduler.submit(spec, redis_conn, sqlite_engine)
    worker = start_worker(env, "--job-process", job_process)
    with RecorderThread(redis_conn, sqlite_engine):

        def step():
            sr = stage(sqlite_engine, run_id, "train_sft")
            with read_session(sqlite_engine) as s:
                return (
                    sr.status == "running"
                    and (s.scalar(select(func.max(Metric.step)).where(Metric.stage_run_id == sr.id)) or 0) >= 8
                )

        wait_for(step, 600, "train_sft past step 8")
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)  # warm shutdown: the job checkpointed and gave up its slot (timed in bench/, not here)
        wait_for(lambda: "preempted" in (stage(sqlite_engine, run_id, "train_sft").log_tail or ""), 30, "preempted")
        assert stage(sqlite_engine, run_id, "train_sft").status in ("queued", "running")
        worker = start_worker(env, "--burst", "--job-process", job_process)
        worker.wait(1200)
        wait_for(lambda: stage(sqlite_engine, run_id, "train_sft").status == "succeeded", 60, "train_sft done")
    done = stage(sqlite_engine, run_id, "train_sft")
    stopped_at = int(done.metrics["resumed_from"].split("-")[1])
    assert stopped_at >= 8 and stopped_at % 1000 != 0  # the checkpoint saved on SIGTERM, not a periodic one
    # the step the stop landed on is recorded too (it was lost when the stop check ran before the metric's event)
    assert loss_steps(sqlite_engine, done) == list(range(1, done.metrics["steps"] + 1))


def test_redis_unreachable_for_20s_mid_job_pauses_it_and_it_completes_once(
    dag_run, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home
):
    """The pod's link to Redis stalls (the Redis process frozen with SIGSTOP: connections stay open, nothing answers)
    for 20 s while train_sft runs: the job waits, nobody starts it a second time, and the run completes."""
    env = {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}
    spec = long_sft_spec(tiny_ci_spec, "redis-stall", max_steps=150)
    spec.sft.seed = 17  # its own artifact key
    run_id = scheduler.submit(spec, redis_conn, sqlite_engine)
    port = redis_server_url.rsplit(":", 1)[1].split("/")[0]
    server = next(
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if "redis-server" in (p.info["name"] or "")
        and (port in (p.info["cmdline"] or []) or f":{port}" in " ".join(p.info["cmdline"] or []))
    )
    worker = start_worker(env, "--burst")
    try:
        with RecorderThread(redis_conn, sqlite_engine):
            wait_for(lambda: stage(sqlite_engine, run_id, "train_sft").status == "running", 600, "train_sft running")
            horses = wait_for(lambda: work_horses(worker), 30, "the work horse")
            server.suspend()
            time.sleep(20)
            server.resume()
            worker.wait(1200)
            wait_for(lambda: stage(sqlite_engine, run_id, "train_sft").status in ("succeeded", "failed"), 60, "end")
        done = stage(sqlite_engine, run_id, "train_sft")
        assert done.status == "succeeded", done.error
        assert done.attempt == 1 and not done.metrics["resumed_from"]  # it ran once, straight through
        assert len(horses) == 1 and not any(p.is_running() for p in horses)
        assert loss_steps(sqlite_engine, done) == list(range(1, done.metrics["steps"] + 1))  # every step once
        print("FIGURE Redis frozen 20 s mid-training -> job paused, ran once, run completed")
    finally:
        server.resume()
        if worker.poll() is None:
            kill_tree(worker)


def test_redis_down_for_20s_mid_job_the_job_runs_once_and_the_run_completes(
    dag_run, tiny_ci_spec, tmp_path, alignlab_home
):
    """Redis refuses connections for 20 s while train_sft runs (the pod's network drops, Redis restarts from its
    AOF). RQ's worker process dies of it after ~10 s; the job's process carries on (events wait, the horse keeps
    the heartbeats), a restarted worker does not start the job again, and the run completes."""
    import redis as redis_lib

    from db.migrate import upgrade
    from tests.ports import free_port
    from tests.reliability.test_disk_and_redis import _redis_server

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis_server(port, tmp_path)
    db_url = f"sqlite:///{tmp_path / 'outage.db'}"
    upgrade(db_url)
    engine = make_engine(db_url)
    conn = redis_lib.Redis.from_url(url)
    env = {"REDIS_URL": url, "ALIGNLAB_HOME": str(alignlab_home)}
    spec = long_sft_spec(tiny_ci_spec, "redis-down", max_steps=150)
    spec.sft.seed = 23  # its own artifact key
    run_id = scheduler.submit(spec, conn, engine)
    first = start_worker(env)
    second = None
    try:
        with RecorderThread(conn, engine):
            wait_for(lambda: stage(engine, run_id, "train_sft").status == "running", 600, "train_sft running")
            horses = wait_for(lambda: work_horses(first), 30, "the work horse")
        server.kill()
        server.wait(10)
        time.sleep(20)
        server = _redis_server(port, tmp_path)  # same port and directory: the AOF brings the queues back
        assert first.wait(30) is not None  # RQ's worker process gave up while Redis was away
        assert all(p.is_running() for p in horses), "the job's process should have outlived its worker"
        second = start_worker(env)  # what a supervisor (compose restart, the pod) does
        conn = redis_lib.Redis.from_url(url)
        with RecorderThread(conn, engine):  # reconciles every 2 s: must not take the job for dead
            wait_for(lambda: RunStatus(commands.run_summary(run_id, engine)["status"]).final, 1200, "the run to end")
        done = stage(engine, run_id, "train_sft")
        assert commands.run_summary(run_id, engine)["status"] == "succeeded", done.error
        assert done.attempt == 1 and not done.metrics["resumed_from"]  # one execution, straight through
        assert loss_steps(engine, done) == list(range(1, done.metrics["steps"] + 1))  # the outage's steps too
        print("FIGURE Redis down 20 s mid-training -> worker process exited, job ran once, run completed")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                kill_tree(proc)
        server.kill()
        engine.dispose()


def steps_recorded_twice(engine, run_id) -> list[tuple]:
    """(stage, metric, step, times) for every point recorded more than once in a run: the exactly-once query."""
    with read_session(engine) as s:
        return [
            tuple(row)
            for row in s.execute(
                select(StageRun.node, Metric.name, Metric.step, func.count())
                .join(StageRun, StageRun.id == Metric.stage_run_id)
                .where(Metric.run_id == run_id)
                .group_by(StageRun.node, Metric.name, Metric.step)
                .having(func.count() > 1)
            )
        ]


def max_step(engine, stage_run) -> int:
    with read_session(engine) as s:
        return s.scalar(select(func.max(Metric.step)).where(Metric.stage_run_id == stage_run.id)) or 0


def kill_horse(worker) -> int:
    """SIGKILL the job's process only (the kernel's OOM killer does this): the worker retries the job."""
    (horse,) = wait_for(lambda: work_horses(worker), 60, "the work horse")
    horse.kill()
    psutil.wait_procs([horse], timeout=30)
    return horse.pid


def test_kills_before_and_after_a_checkpoint_preemption_mid_dpo_and_nan_record_every_step_once(
    dag_run, tiny_ci_spec, redis_conn, redis_server_url, sqlite_engine, alignlab_home
):
    from workers.events import EventEmitter

    env = {"REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}
    spec = copy.deepcopy(tiny_ci_spec)
    spec.name = "every-step-once"
    spec.stages = ["generate_sft", "train_sft", "generate_negatives", "make_pairs", "train_dpo"]
    spec.sft.seed = spec.dpo.seed = 23  # their own artifact keys
    spec.sft.num_epochs, spec.sft.max_steps, spec.sft.batch_size, spec.sft.checkpoint_every = 100.0, 60, 2, 25
    spec.dpo.num_epochs, spec.dpo.max_steps, spec.dpo.batch_size, spec.dpo.checkpoint_every = 100.0, 40, 2, 1000
    spec.execution.retries = 3  # a killed job process is retried by RQ
    run_id = scheduler.submit(spec, redis_conn, sqlite_engine)
    worker = start_worker(env)
    try:
        with RecorderThread(redis_conn, sqlite_engine):
            sft = lambda: stage(sqlite_engine, run_id, "train_sft")  # noqa: E731
            # 1. SIGKILL before the first checkpoint (step 25): the retry starts from step 0
            wait_for(lambda: sft().status == "running" and max_step(sqlite_engine, sft()) >= 3, 600, "sft step 3")
            kill_horse(worker)
            killed_at = max_step(sqlite_engine, sft())
            # 2. SIGKILL after the first checkpoint: the retry resumes from checkpoint-25
            wait_for(lambda: max_step(sqlite_engine, sft()) >= 28 and work_horses(worker), 600, "sft past step 28")
            kill_horse(worker)
            # 3. a NaN reaches the stream between them (a diverging metric of this stage)
            EventEmitter(redis_conn, run_id, sft().id).emit("metric", step=1, values={"probe": float("nan")})
            # 4. SIGTERM mid-DPO: checkpoint, requeue, another worker resumes
            dpo_running = lambda: next(  # noqa: E731
                (
                    s
                    for s in (stage(sqlite_engine, run_id, n) for n in ("dpo_sft", "dpo_base"))
                    if s.status == "running"
                ),
                None,
            )
            wait_for(lambda: (s := dpo_running()) and max_step(sqlite_engine, s) >= 3, 900, "a DPO stage at step 3")
            preempted = dpo_running().node
            worker.send_signal(signal.SIGTERM)
            worker.wait(120)
            worker = start_worker(env, "--burst")
            worker.wait(1200)
            wait_for(
                lambda: all(s.status in ("succeeded", "cached", "failed") for s in run_stages(sqlite_engine, run_id)),
                120,
                "every stage finished",
            )
            if any(s.status == "failed" for s in run_stages(sqlite_engine, run_id)):
                scheduler.resume(run_id, redis_conn, sqlite_engine)  # whatever a kill left failed is resumable
                worker = start_worker(env, "--burst")
                worker.wait(1200)
            wait_for(lambda: RunStatus(run_status(sqlite_engine, run_id)).final, 120, "the run to finish")
    finally:
        if worker.poll() is None:
            kill_tree(worker)
    assert run_status(sqlite_engine, run_id) == "succeeded", [
        (s.node, s.error) for s in run_stages(sqlite_engine, run_id)
    ]
    assert steps_recorded_twice(sqlite_engine, run_id) == []
    trained = {s.node: s for s in run_stages(sqlite_engine, run_id) if s.stage in ("train_sft", "train_dpo")}
    for node, stage_run in trained.items():
        assert loss_steps(sqlite_engine, stage_run) == list(range(1, stage_run.metrics["steps"] + 1)), node
    assert killed_at < 25  # the first kill landed before the first checkpoint
    assert trained["train_sft"].attempt == 1 and trained["train_sft"].metrics["resumed_from"] == "checkpoint-25"
    assert trained[preempted].metrics["resumed_from"] is not None  # the checkpoint saved at SIGTERM
    with read_session(sqlite_engine) as s:
        probe = s.execute(select(Metric.value, Metric.non_finite).where(Metric.name == "probe")).all()
    assert [tuple(p) for p in probe] == [(None, "nan")]


def run_stages(engine, run_id) -> list[StageRun]:
    with read_session(engine) as s:
        return list(s.scalars(select(StageRun).where(StageRun.run_id == run_id).order_by(StageRun.id)))


def run_status(engine, run_id) -> str:
    with read_session(engine) as s:
        return s.get(Run, run_id).status
