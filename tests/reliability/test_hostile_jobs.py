"""A job hash planted in Redis (anyone who can write to it can) never runs code or connects anywhere.

RQ's own clean-up of a registry calls an abandoned job's failure callback and sends its webhooks. A hostile job is
planted in every registry of every queue, and then every alignlab process that loads jobs does its work over them:
the reconciler (the recorder's timer), a real worker process (its maintenance cleans every registry, then it takes
the queued one), the fleet view and `alignlab workers`. The callback would mark Redis; the webhook would connect to a
listening socket. Neither may happen.
"""

import os
import socket
import subprocess
import sys
import threading
import time

from rq import Callback, Webhook
from rq.job import Job, JobStatus
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ReadyJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer

from tests.callback_probe import PROBE_KEY
from tests.test_cli_up import ROOT

REGISTRIES = [
    StartedJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    DeferredJobRegistry,
    ReadyJobRegistry,
    ScheduledJobRegistry,
    CanceledJobRegistry,
]
HOSTILE_FUNCTION = "tests.callback_probe.record"  # importable, not on the allowlist


class Listener:
    """A socket on loopback that counts every connection made to it (the webhook's target)."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        self.server.close()
        return self.connections


def plant(connection, queue_name: str, registry_class, url: str) -> Job:
    """A job hash with every callback and a webhook for every status, written with RQ's plain Job class (what an
    attacker with Redis access writes), registered as long expired in `registry_class`."""
    hooks = Callback(HOSTILE_FUNCTION)
    job = Job.create(
        HOSTILE_FUNCTION,
        connection=connection,
        serializer=JSONSerializer,
        origin=queue_name,
        on_success=hooks,
        on_failure=hooks,
        on_stopped=hooks,
        webhooks=[Webhook(url, status, timeout=1) for status in ("failed", "finished")],
    )
    job.set_status(JobStatus.STARTED if registry_class is StartedJobRegistry else JobStatus.DEFERRED, pipeline=None)
    job.save()
    key = registry_class(queue_name, connection=connection, serializer=JSONSerializer).key
    member = f"{job.id}:hostile-execution" if registry_class is StartedJobRegistry else job.id
    connection.zadd(key, {member: 1})  # expired since 1970
    return job


def test_a_hostile_job_in_every_registry_runs_nothing_and_connects_nowhere(
    redis_conn, redis_server_url, engine, db_url
):
    from pipeline.core.configs import QUEUE_NAMES
    from workers.fleet import fleet
    from workers.reconciler import reconcile

    listener = Listener()
    planted = [plant(redis_conn, name, kind, listener.url) for name in QUEUE_NAMES for kind in REGISTRIES]
    # and one waiting in each queue, for the worker to take
    queued = [
        Job.create(
            HOSTILE_FUNCTION,
            connection=redis_conn,
            serializer=JSONSerializer,
            origin=name,
            on_failure=Callback(HOSTILE_FUNCTION),
            webhooks=[Webhook(listener.url, "failed", timeout=1)],
        )
        for name in QUEUE_NAMES
    ]
    for job in queued:
        job.save()
        redis_conn.rpush(f"rq:queue:{job.origin}", job.id)
        redis_conn.sadd("rq:queues", f"rq:queue:{job.origin}")

    reconcile(redis_conn, engine)
    env = {**os.environ, "REDIS_URL": redis_server_url, "DATABASE_URL": db_url}
    worker = subprocess.run(
        [sys.executable, "-m", "workers", "--queues", ",".join(QUEUE_NAMES), "--burst", "--job-process", "fork"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    fleet(redis_conn)
    cli = subprocess.run(
        [sys.executable, "-m", "workers.cli", "workers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    reconcile(redis_conn, engine)  # once more, now that the worker has been and gone

    # the worker really took the queued ones (so it did load them) and refused them
    for job in queued:
        job.refresh()
        assert job.get_status() == JobStatus.FAILED
        assert "not an allowlisted alignlab job" in job.latest_result().exc_string
    # the abandoned one really went through RQ's abandoned-job clean-up (where callbacks and webhooks fire)
    started = [job for job in planted if job.get_status(refresh=True) == JobStatus.FAILED]
    assert len(started) >= len(QUEUE_NAMES)
    assert redis_conn.get(PROBE_KEY) is None, "a callback named by a planted job ran"
    assert listener.close() == 0, "a webhook named by a planted job was contacted"


def test_the_planted_job_would_run_its_callback_under_rqs_plain_job_class(redis_conn):
    """The probe works: RQ's clean-up with its plain Job class does run the planted callback (why the test above
    matters, and proof that it can fail)."""
    listener = Listener()
    plant(redis_conn, "cpu", StartedJobRegistry, listener.url)
    StartedJobRegistry("cpu", connection=redis_conn, serializer=JSONSerializer).cleanup()
    deadline = time.monotonic() + 30
    while listener.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_conn.get(PROBE_KEY) is not None
    assert listener.close() >= 1
