"""Health checks for containers and pods: `python -m workers.health recorder|worker|redis`; exit 0 when healthy.

- redis: reachable and authenticated (REDIS_URL);
- recorder: a consumer of the event stream's group read within the last 60 s;
- worker: an RQ worker on this host sent a heartbeat within the last 120 s.
"""

from __future__ import annotations

import socket
import sys
import time

RECORDER_IDLE_S = 60
WORKER_HEARTBEAT_S = 120


def check(component: str) -> str:
    """A line saying what is healthy; raises RuntimeError saying what is not."""
    from workers import events
    from workers.queues import connect
    from workers.recorder import GROUP

    connection = connect()
    connection.ping()
    if component == "redis":
        return "redis: reachable"
    if component == "recorder":
        consumers = connection.xinfo_consumers(events.STREAM, GROUP)
        idle = min((c["idle"] / 1000 for c in consumers), default=None)
        if idle is None or idle > RECORDER_IDLE_S:
            raise RuntimeError(f"recorder: no consumer of {events.STREAM} read in the last {RECORDER_IDLE_S} s")
        return f"recorder: read {idle:.0f} s ago"
    if component == "worker":
        from workers.queues import all_workers

        host = socket.gethostname()
        now = time.time()
        beats = [
            now - w.last_heartbeat.timestamp()
            for w in all_workers(connection)
            if w.hostname == host and w.last_heartbeat
        ]
        if not beats or min(beats) > WORKER_HEARTBEAT_S:
            raise RuntimeError(f"worker: no worker on {host} sent a heartbeat in the last {WORKER_HEARTBEAT_S} s")
        return f"worker: heartbeat {min(beats):.0f} s ago"
    raise RuntimeError(f"unknown component {component!r}: redis, recorder or worker")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        print(check(argv[0] if argv else "redis"))
    except Exception as exc:  # noqa: BLE001 - a health check reports, it never raises
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
