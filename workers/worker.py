"""The worker process: an RQ worker with the JSON serializer, the job allowlist and a short maintenance interval
(abandoned jobs are noticed in about a minute, not RQ's default ten). Its jobs run either each in a fresh forked
process (`ForkingWorker`, the default) or one after another in the worker's own process (`ReusingWorker`, for a
supervised worker such as `alignlab up`'s)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time

from rq import SimpleWorker, Worker
from rq.scheduler import RQScheduler

from pipeline.core.registry import STAGES
from workers.fleet import WORKER_TTL_S, gpus
from workers.memory_limit import DEFAULT_SHARE, ENV_VAR, JobMemoryLimit
from workers.queues import ALLOWED_JOBS, SERIALIZER, AllowlistJob, connect, queue

MAINTENANCE_INTERVAL_S = 60
# the facts for the Workers page are refreshed at most this often (well inside fleet.LOST_AFTER_S)
PUBLISH_EVERY_S = 5
# The job's heartbeat is refreshed this often (from the process that runs it); the reconciler calls a job dead after
# 3 misses.
JOB_MONITORING_INTERVAL_S = 10
# a job still running this long past its timeout is ended with its process (RQ's forking worker uses the same margin)
OVERDUE_KILL_AFTER_S = 60
# the exit status of a worker that stopped because a job left a model in memory (its supervisor starts a fresh one)
EXIT_HOLDING_MODELS = 3
# how often the process that runs a job looks for a cancel of its run and measures its memory
WATCH_INTERVAL_S = 1.0
# a cancelled job that has not reported anything for this long since the cancel (stuck in one call: it never reaches
# the progress report where the cooperative cancel is checked) is ended with the process that runs it; a job that
# reports in the meantime meets the cooperative cancel there and ends by itself
CANCEL_GRACE_S = 10.0


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux `PR_SET_PDEATHSIG`): a helper process (RQ's
    scheduler) must never outlive the worker that started it. Elsewhere a no-op."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class ParentBoundScheduler(RQScheduler):
    """RQ's scheduler process, which dies with its worker (a SIGKILLed worker used to leave it running, parentless)."""

    def work(self):
        die_with_parent()
        return super().work()


def job_run_id(job) -> int | None:
    """The alignlab run a job belongs to (a stage job's first argument), or None for a job of no run."""
    if job.func_name == "workers.jobs.run_stage_job" and job.args:
        return int(job.args[0])
    return None


class AlignlabWorker:
    """What every alignlab worker does, whichever process runs its jobs: on SIGTERM (spot preemption, `docker stop`)
    the running job is told to checkpoint and is requeued, then the worker shuts down warm (RQ alone would wait for
    a training job to finish, past any grace period); the job's heartbeats are kept fresh from the process that runs
    it; the worker's facts are published for the Workers page."""

    # set on a worker whose jobs run in its own process: nobody else can kill an overdue job there
    kills_overdue_jobs = False
    # how many models a job left in memory when this worker stopped because of it (ReusingWorker)
    stopped_holding_models = 0

    # the memory a job may take on top of what its process held when it started (None: no limit)
    memory_limit: JobMemoryLimit | None = None

    def perform_job(self, job, queue, execution):
        """Called in the process that runs the job (the work horse, or the worker itself): keep the job's and
        execution's heartbeats fresh from there. If the worker's loop dies (RQ's forking worker exits when Redis is
        unreachable for ~10 s) the job still runs, and neither the reconciler nor RQ's cleanup takes it for
        abandoned and starts it a second time. The job runs under the worker's memory limit, and a cancel of its
        run ends it within seconds even when it is stuck in one call (`_watch_job`)."""
        stop = threading.Event()
        limited = self.memory_limit.applied() if self.memory_limit is not None else contextlib.nullcontext()
        with limited:
            for loop in (self._job_heartbeats, self._watch_job):
                threading.Thread(target=loop, args=(job, execution, stop), daemon=True).start()
            try:
                return super().perform_job(job, queue, execution)
            finally:
                stop.set()

    def _job_heartbeats(self, job, execution, stop: threading.Event) -> None:
        """RQ's own `maintain_heartbeats` (worker, execution and job, with RQ's TTL), every monitoring interval,
        retried every second while Redis is unreachable so the heartbeat is fresh again right after it returns.
        Where the job runs in the worker's own process, a job still running `OVERDUE_KILL_AFTER_S` past its timeout
        (RQ's alarm did not stop it: stuck in native code) is ended as RQ's forking worker ends its horse then."""
        timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
        overdue = self.kills_overdue_jobs and timeout > 0
        deadline = time.monotonic() + timeout + OVERDUE_KILL_AFTER_S if overdue else None
        while not stop.wait(self.job_monitoring_interval):
            if deadline is not None and time.monotonic() > deadline:
                self.kill_overdue_job(job)
                return
            while not stop.is_set():
                try:
                    self.maintain_heartbeats(job, execution)
                    break
                except Exception:  # noqa: BLE001 - Redis away: try again shortly; the job itself carries on
                    stop.wait(1.0)

    def _watch_job(self, job, execution, stop: threading.Event) -> None:
        """Every `WATCH_INTERVAL_S`, from the process that runs the job: a job whose run was cancelled and that has
        reported nothing for `CANCEL_GRACE_S` since (the cooperative cancel waits for a progress report a job stuck
        in one call never makes) is ended with its process; so is a job over the memory limit where the limit is watched
        rather than enforced by the kernel (a GPU process)."""
        from workers.events import cancel_key
        from workers.jobs import LAST_REPORT

        run_id = job_run_id(job)
        cancelled_at = None
        while not stop.wait(WATCH_INTERVAL_S):
            if self.memory_limit is not None and self.memory_limit.exceeded():
                self.end_job_process(job, f"over its memory limit ({self.memory_limit.describe()})")
                return
            if run_id is None:
                continue
            if cancelled_at is None:
                try:
                    if self.connection.exists(cancel_key(run_id)):
                        cancelled_at = time.monotonic()
                except Exception:  # noqa: BLE001 - Redis away: look again at the next interval
                    continue
            elif time.monotonic() - max(cancelled_at, LAST_REPORT["at"]) > CANCEL_GRACE_S:
                grace = f"{CANCEL_GRACE_S:.0f} s"
                self.end_job_process(job, f"run {run_id} was cancelled and the job reported nothing for {grace}")
                return

    def end_job_process(self, job, reason: str) -> None:
        """End the process that runs the job: the work horse (its worker takes the next job), or, for a worker that
        runs its jobs itself, the worker (its supervisor starts a fresh one; its scheduler dies with it)."""
        self.log.error("job %s: %s: ending the process that runs it (pid %d)", job.id, reason, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)

    def kill_overdue_job(self, job) -> None:
        """The job's process is this worker: it goes with the job (its supervisor starts a fresh one; RQ's cleanup
        of abandoned jobs fails or retries the job, as for a worker that died)."""
        self.end_job_process(job, f"{OVERDUE_KILL_AFTER_S} s past its timeout")

    def _start_scheduler(self, burst=False, logging_level="INFO", date_format=None, log_format=None):
        """RQ's own start of its scheduler, with the scheduler bound to this worker's life (`ParentBoundScheduler`)."""
        from rq.worker import base

        kwargs = {k: v for k, v in (("date_format", date_format), ("log_format", log_format)) if v is not None}
        previous, base.RQScheduler = base.RQScheduler, ParentBoundScheduler
        try:
            return super()._start_scheduler(burst, logging_level, **kwargs)
        finally:
            base.RQScheduler = previous

    def register_birth(self):
        super().register_birth()
        self._publish("started")

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ's heartbeat, and this worker's facts at most every PUBLISH_EVERY_S: RQ also beats before every
        dequeue, and the facts cost an `nvidia-smi` call on a GPU host, which must not be paid per job."""
        super().heartbeat(timeout, pipeline)
        if time.monotonic() - getattr(self, "_published_at", float("-inf")) >= PUBLISH_EVERY_S:
            self._publish("heartbeat")

    def register_death(self):
        self._publish("stopped")
        super().register_death()

    def _publish(self, state: str) -> None:
        """This worker's facts for the Workers page (`workers.fleet`); a failure to publish never stops work."""
        from workers.fleet import publish

        self._published_at = time.monotonic()
        try:
            publish(self.connection, self, state)
        except Exception:  # noqa: BLE001 - Redis away or nvidia-smi odd: the next heartbeat publishes again
            self.log.warning("could not publish this worker's facts", exc_info=True)

    def request_stop(self, signum, frame):
        from workers.events import preempt_key

        try:
            self.connection.set(preempt_key(self.name), "1", ex=3600)
        except Exception:  # noqa: BLE001  (Redis gone: RQ's own shutdown still proceeds)
            self.log.warning("could not flag preemption in Redis")
        super().request_stop(signum, frame)


class ForkingWorker(AlignlabWorker, Worker):
    """Each job in a fresh process forked from this warm one (RQ's work horse): whatever the job holds (GPU memory,
    a crash, the kernel's OOM kill) ends with it, and the worker takes the next job. Each job pays its first-run
    costs again (lazy initialisation, the interpreter's specialisation, copy-on-write pages): about 0.1 s per stage
    on CPU, a CUDA context on a GPU. The default of `python -m workers` (a pod's worker, nobody to restart it)."""

    def fork_work_horse(self, job, queue):
        """Fork with the parent's objects frozen (`gc.freeze`): the job's garbage collector then never walks the
        preloaded ML stack, which would touch (and copy, page by page) the whole inherited heap on every
        collection. Measured on the tiny DPO stage: 2.3 s in a plain fork, 1.7 s with the heap frozen."""
        gc.freeze()
        try:
            return super().fork_work_horse(job, queue)
        finally:
            gc.unfreeze()  # the parent's own garbage is collected as usual between jobs


class ReusingWorker(AlignlabWorker, SimpleWorker):
    """Jobs run one after another in this worker's own process, warm: what a stage initialised on first use, the
    next stage finds done (the queued tiny DAG costs what it costs in one process, bench `orchestration`). A crash
    or OOM kill takes the worker with the job, so it is for a supervised worker (`alignlab up` restarts it; RQ's
    cleanup of abandoned jobs retries the job, which resumes from its checkpoint). After each job every model
    the job loaded must be gone: one that is still in memory (a leak the next stage would have to fit beside)
    stops the worker after that job, so that a fresh process takes the next one."""

    kills_overdue_jobs = True

    def work(self, *args, **kwargs):
        """With what exists now frozen (`gc.freeze`: the imported ML stack, never garbage), so that the jobs'
        collections never walk it; unfrozen when the worker stops (as `pipeline.dag.run_dag` does)."""
        gc.freeze()
        try:
            return super().work(*args, **kwargs)
        finally:
            gc.unfreeze()

    def execute_job(self, job, queue):
        from pipeline.models import models_in_memory

        before = models_in_memory()  # what this process held already (a caller's own model) is not the job's
        try:
            return super().execute_job(job, queue)
        finally:
            self._release_job_memory(job, before)

    def _release_job_memory(self, job, before) -> None:
        from pipeline.models import models_in_memory, release_memory

        release_memory()
        held = sum(1 for model in models_in_memory() if model not in before)
        if held:
            self.log.error(
                "%d model(s) loaded by job %s are still in memory after it ended: this worker stops so that a "
                "fresh process takes the next job",
                held,
                job.id,
            )
            self.stopped_holding_models = held
            self._stop_requested = True  # RQ's own flag: its loop ends before the next dequeue


# how a worker runs its jobs (`python -m workers --job-process`)
JOB_PROCESSES: dict[str, type[AlignlabWorker]] = {"fork": ForkingWorker, "reuse": ReusingWorker}


def make_worker(
    queue_names: list[str], connection, name: str | None = None, worker_class: type[AlignlabWorker] = ForkingWorker
) -> AlignlabWorker:
    return worker_class(
        [queue(n, connection) for n in queue_names],
        connection=connection,
        serializer=SERIALIZER,
        job_class=AllowlistJob,
        name=name or f"{socket.gethostname()}-{os.getpid()}",
        maintenance_interval=MAINTENANCE_INTERVAL_S,
        worker_ttl=WORKER_TTL_S,  # an idle worker heartbeats every 15 s: a silent one is seen lost within a minute
        job_monitoring_interval=JOB_MONITORING_INTERVAL_S,
    )


def preload() -> None:
    """Import the ML stack once, before the first job, so that every forked job (and a reusing worker's first one)
    starts warm (seconds saved per job), and build what each job would otherwise build again in its fresh fork:
    the trainers' lazily imported modules and transformers' checkpoint weight-name mapping (about 0.2 s of regex
    compiling per model load).

    All of it is pure Python: nothing here runs a tensor operation or touches a device (a parent that ran
    OpenMP-parallel ops could hang its forked children; CUDA must not be initialised before a fork).
    """
    import importlib

    stage_modules = [stage.module for stage in STAGES.values()]
    # the allowlisted job functions' own modules (with the event schemas: ~40 ms of pydantic model building that
    # every job would otherwise pay again after its fork)
    job_modules = sorted({name.rpartition(".")[0] for name in ALLOWED_JOBS})
    # what the stages import on first use, which a fork would otherwise import again in every job: the statistics
    # of compare (scipy.stats, ~170 modules) and the architecture of the tiny and the catalog models (Llama)
    first_use = ("scipy.stats", "transformers.models.llama.modeling_llama")
    for module in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "pipeline.dag",
        *job_modules,
        *stage_modules,
        *first_use,
    ):
        importlib.import_module(module)
    from transformers import Trainer  # noqa: F401  (lazy modules: resolved once, here)
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from trl import DPOTrainer, SFTTrainer  # noqa: F401

    get_checkpoint_conversion_mapping("llama")  # builds (and caches) the mapping of every model type at once

    from pipeline.artifacts import code_version

    # the version of the code this worker has loaded, hashed once, here: its forked jobs run these modules, so a
    # source file edited on disk while the worker runs (a `git pull` on the pod mid-run) must not give a job keys
    # its upstream jobs, which ran the same loaded code, did not write
    code_version()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description="alignlab GPU worker (one job at a time)")
    parser.add_argument("--queues", default="gpu,cpu", help="Comma-separated queues this worker serves.")
    parser.add_argument("--burst", action="store_true", help="Exit when the queues are empty.")
    parser.add_argument("--name", help="Worker name (default host-pid).")
    parser.add_argument("--no-preload", action="store_true", help="Do not import the ML stack before the first job.")
    parser.add_argument(
        "--job-process",
        choices=sorted(JOB_PROCESSES),
        default="fork",
        help="fork: each job in a fresh process forked from this one (a crash or OOM kill takes only the job); "
        "reuse: jobs run in this process, warm (for a supervised worker: a crash takes the worker with it).",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=None,
        help="Memory one job may take above what its process held at its start, in MiB (default: "
        f"${ENV_VAR}, else {DEFAULT_SHARE:.0%} of this machine's memory; 0: no limit). Enforced by the kernel on a "
        "CPU worker (the job fails with MemoryError), watched every second on a GPU worker (the job's process ends).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("ALIGNLAB_LOG_LEVEL", "INFO"))
    if not args.no_preload:
        preload()
    # Never touch CUDA here: a forked job's GPU memory returns to the driver when it exits, and CUDA cannot be used
    # in a child forked after it was initialised.
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    worker = make_worker(queues, connect(), args.name, JOB_PROCESSES[args.job_process])
    worker.memory_limit = JobMemoryLimit.from_setting(args.memory_limit_mb, enforce_address_space=not gpus())
    worker.work(burst=args.burst, with_scheduler=True)
    if worker.stopped_holding_models:
        return EXIT_HOLDING_MODELS
    return 0
