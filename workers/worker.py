"""The worker process: RQ's forking Worker with the JSON serializer, the job allowlist and a short
maintenance interval (abandoned jobs are noticed in about a minute, not RQ's default ten)."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from rq import Worker

from workers.queues import SERIALIZER, AllowlistJob, connect, queue

MAINTENANCE_INTERVAL_S = 60
# The parent refreshes the job's heartbeat this often; the reconciler calls a job dead after 3 misses.
JOB_MONITORING_INTERVAL_S = 10


def make_worker(queue_names: list[str], connection, name: str | None = None, worker_class: type = Worker) -> Worker:
    return worker_class(
        [queue(n, connection) for n in queue_names],
        connection=connection,
        serializer=SERIALIZER,
        job_class=AllowlistJob,
        name=name or f"{socket.gethostname()}-{os.getpid()}",
        maintenance_interval=MAINTENANCE_INTERVAL_S,
        job_monitoring_interval=JOB_MONITORING_INTERVAL_S,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description="alignlab GPU worker (one job at a time)")
    parser.add_argument("--queues", default="gpu,cpu", help="Comma-separated queues this worker serves.")
    parser.add_argument("--burst", action="store_true", help="Exit when the queues are empty.")
    parser.add_argument("--name", help="Worker name (default host-pid).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("ALIGNLAB_LOG_LEVEL", "INFO"))
    # Never touch CUDA here: each job runs in a forked child, so its GPU memory returns to the driver on exit.
    worker = make_worker([q.strip() for q in args.queues.split(",") if q.strip()], connect(), args.name)
    worker.work(burst=args.burst, with_scheduler=True)
    return 0
