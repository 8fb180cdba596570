"""The worker process: RQ's forking Worker with the JSON serializer, the job allowlist and a short
maintenance interval (abandoned jobs are noticed in about a minute, not RQ's default ten)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import threading
import time

from rq import Worker

from pipeline.core.registry import STAGES
from workers.fleet import WORKER_TTL_S
from workers.queues import ALLOWED_JOBS, SERIALIZER, AllowlistJob, connect, queue

MAINTENANCE_INTERVAL_S = 60
# the facts for the Workers page are refreshed at most this often (well inside fleet.LOST_AFTER_S)
PUBLISH_EVERY_S = 5
# The parent refreshes the job's heartbeat this often; the reconciler calls a job dead after 3 misses.
JOB_MONITORING_INTERVAL_S = 10


class PreemptibleWorker(Worker):
    """On SIGTERM (spot preemption, `docker stop`) the running job is told to checkpoint and is requeued; then the
    worker shuts down warm. RQ alone would wait for a training job to finish, past any grace period."""

    def perform_job(self, job, queue, execution):
        """In the work horse, keep the job's and execution's heartbeats fresh from the horse itself: if the worker
        process dies (RQ's worker exits when Redis is unreachable for ~10 s) the job still runs, and neither the
        reconciler nor RQ's cleanup takes it for abandoned and starts it a second time."""
        if not self.is_horse:
            return super().perform_job(job, queue, execution)
        stop = threading.Event()
        beat = threading.Thread(target=self._horse_heartbeats, args=(job, execution, stop), daemon=True)
        beat.start()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            stop.set()

    def _horse_heartbeats(self, job, execution, stop: threading.Event) -> None:
        """RQ's own `maintain_heartbeats` (worker, execution and job, with RQ's TTL), every monitoring interval,
        from inside the job's process; retried every second while Redis is unreachable so the heartbeat is fresh
        again right after it returns."""
        while not stop.wait(self.job_monitoring_interval):
            while not stop.is_set():
                try:
                    self.maintain_heartbeats(job, execution)
                    break
                except Exception:  # noqa: BLE001 - Redis away: try again shortly; the job itself carries on
                    stop.wait(1.0)

    def fork_work_horse(self, job, queue):
        """Fork with the parent's objects frozen (`gc.freeze`): the job's garbage collector then never walks the
        preloaded ML stack, which would touch (and copy, page by page) the whole inherited heap on every
        collection. Measured on the tiny DPO stage: 2.3 s in a plain fork, 1.7 s with the heap frozen."""
        gc.freeze()
        try:
            return super().fork_work_horse(job, queue)
        finally:
            gc.unfreeze()  # the parent's own garbage is collected as usual between jobs

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


def make_worker(
    queue_names: list[str], connection, name: str | None = None, worker_class: type = PreemptibleWorker
) -> Worker:
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
    """Import the ML stack once in the parent so that every forked job starts warm (seconds saved per job), and
    build what each job would otherwise build again in its fresh fork: the trainers' lazily imported modules and
    transformers' checkpoint weight-name mapping (about 0.2 s of regex compiling per model load).

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
    parser.add_argument("--no-preload", action="store_true", help="Do not import the ML stack before forking.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("ALIGNLAB_LOG_LEVEL", "INFO"))
    if not args.no_preload:
        preload()
    # Never touch CUDA here: each job runs in a forked child, so its GPU memory returns to the driver on exit.
    worker = make_worker([q.strip() for q in args.queues.split(",") if q.strip()], connect(), args.name)
    worker.work(burst=args.burst, with_scheduler=True)
    return 0
