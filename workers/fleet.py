"""The fleet: which workers exist, what each one has and does, and which ones went silent.

Each worker publishes its own facts (host, queues, GPU or CPU and its memory, versions) when it starts and again
with every heartbeat, in a Redis hash of its own that outlives RQ's worker key, so a worker that dies without a word
(SIGKILL, a pod gone) stays listed, as lost. RQ's worker registry says what a live worker is doing and how many jobs
it has done. Nothing here initialises CUDA: the worker's parent must not (its forked jobs own the GPU), so GPU facts
come from `nvidia-smi`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import redis

FACTS_PREFIX = "alignlab:fleet:"
# the processes `alignlab up` supervises (Redis, recorder, worker, dashboard): their state and restarts
SUPERVISED_KEY = "alignlab:up:processes"
FACTS_TTL_S = 24 * 3600  # a lost or stopped worker stays listed for a day
# RQ's idle worker heartbeats every (worker_ttl - 15) s, a busy one every job-monitoring interval (10 s)
WORKER_TTL_S = 30
HEARTBEAT_S = WORKER_TTL_S - 15
LOST_AFTER_S = 3 * HEARTBEAT_S  # three heartbeats missed


@functools.cache
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict[str, Any]]:
    """Each visible GPU's index, name and memory (MiB), from `nvidia-smi`; [] where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "index,name,memory.total,memory.free"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    rows = []
    for line in out.strip().splitlines():
        index, name, total, free = (part.strip() for part in line.split(","))
        if visible is None or index in visible.split(","):
            rows.append(
                {"index": int(index), "name": name, "memory_total_mib": int(total), "memory_free_mib": int(free)}
            )
    return rows


def device_facts() -> dict[str, Any]:
    """The worker's compute: its GPUs, or the CPU (cores, memory) when it has none."""
    found = gpus()
    if found:
        return {
            "device": "cuda",
            "device_name": ", ".join(g["name"] for g in found),
            "gpus": len(found),
            "memory_total_mib": sum(g["memory_total_mib"] for g in found),
            "memory_free_mib": sum(g["memory_free_mib"] for g in found),
        }
    import psutil

    memory = psutil.virtual_memory()
    return {
        "device": "cpu",
        "device_name": f"CPU, {os.cpu_count()} cores",
        "gpus": 0,
        "memory_total_mib": memory.total // 2**20,
        "memory_free_mib": memory.available // 2**20,
    }


def facts_key(name: str) -> str:
    return FACTS_PREFIX + name


def publish(connection: redis.Redis, worker: Any, state: str) -> None:
    """Write `worker`'s facts, its current job and `state` (started, heartbeat, stopped) with the time; the record
    is kept FACTS_TTL_S, past RQ's own worker key, so that a worker that vanished is still seen, as lost."""
    facts = {
        "name": worker.name,
        "host": socket.gethostname(),
        "queues": worker.queue_names(),
        "alignlab": _version("alignlab"),
        "torch": _version("torch"),
        **device_facts(),
    }
    key = facts_key(worker.name)
    job_id = worker.get_current_job_id() if state != "stopped" else None
    with connection.pipeline() as pipe:
        pipe.hset(
            key, mapping={"facts": json.dumps(facts), "state": state, "seen_at": time.time(), "job_id": job_id or ""}
        )
        pipe.expire(key, FACTS_TTL_S)
        pipe.execute()


@dataclass
class WorkerView:
    """One row of the Workers page and of `alignlab workers`."""

    name: str
    host: str
    queues: list[str]
    device: str
    device_name: str
    memory_total_mib: int | None
    memory_free_mib: int | None
    alignlab: str | None
    torch: str | None
    state: str  # busy, idle, lost, stopped
    job_id: str | None
    heartbeat_age_s: float
    jobs_done: int | None
    jobs_failed: int | None
    job: dict[str, Any] = field(default_factory=dict)  # run id, node, status of its (last) job, from the database


def fleet(connection: redis.Redis, now: float | None = None) -> list[WorkerView]:
    """Every worker that published its facts in the last day, live ones first, then by name."""
    from workers.queues import all_workers

    now = time.time() if now is None else now
    live = {w.name: w for w in all_workers(connection)}
    views = []
    for key in connection.scan_iter(match=FACTS_PREFIX + "*", count=500):
        record = connection.hgetall(key)
        if not record:
            continue
        facts = json.loads(record[b"facts"])
        name = facts["name"]
        worker = live.get(name)
        beat = worker.last_heartbeat.timestamp() if worker is not None and worker.last_heartbeat else 0.0
        last = max(beat, float(record[b"seen_at"]))
        age = now - last
        # a live worker says what it runs now; a vanished one, what it ran at its last heartbeat
        job_id = worker.get_current_job_id() if worker is not None else (record[b"job_id"].decode() or None)
        if record[b"state"] == b"stopped":
            state = "stopped"
        elif worker is None or age > LOST_AFTER_S:
            state = "lost"
        else:
            state = "busy" if job_id else "idle"
        views.append(
            WorkerView(
                name=name,
                host=facts["host"],
                queues=facts["queues"],
                device=facts["device"],
                device_name=facts["device_name"],
                memory_total_mib=facts.get("memory_total_mib"),
                memory_free_mib=facts.get("memory_free_mib"),
                alignlab=facts.get("alignlab"),
                torch=facts.get("torch"),
                state=state,
                job_id=job_id,
                heartbeat_age_s=age,
                jobs_done=worker.successful_job_count if worker is not None else None,
                jobs_failed=worker.failed_job_count if worker is not None else None,
            )
        )
    order = {"busy": 0, "idle": 1, "lost": 2, "stopped": 3}
    return sorted(views, key=lambda v: (order[v.state], v.name))


def _memory(view: WorkerView) -> str:
    if view.memory_total_mib is None:
        return "–"
    return f"{(view.memory_free_mib or 0) / 1024:.1f} of {view.memory_total_mib / 1024:.1f} GiB free"


def _job(view: WorkerView, stage: dict[str, Any] | None) -> str:
    """What the worker runs, or for a lost one what became of the job it was running."""
    if view.job_id is None:
        return "–"
    if stage is None:
        return view.job_id
    text = f"run {stage['run_id']} · {stage['node']} ({stage['status']})"
    if view.state == "lost":
        if stage["status"] == "running":
            text += ": its worker is gone; marked failed within a minute, then resumable"
        elif stage["status"] == "failed":
            text += f": resumable (Resume run {stage['run_id']})"
    return text


def fleet_table(connection: redis.Redis, now: float | None = None) -> list[dict[str, Any]]:
    """The Workers page's and `alignlab workers`' rows, written for people."""
    from db.queries import stage_runs_by_job
    from pipeline.core.durations import human_duration

    views = fleet(connection, now)
    stages = stage_runs_by_job([v.job_id for v in views if v.job_id])
    return [
        {
            "worker": v.name,
            "state": v.state,
            "host": v.host,
            "queues": ", ".join(v.queues),
            "device": v.device_name,
            "memory": _memory(v),
            "job": _job(v, stages.get(v.job_id or "")),
            "last heartbeat": f"{human_duration(v.heartbeat_age_s)} ago",
            "jobs done": "–" if v.jobs_done is None else str(v.jobs_done),
            "jobs failed": "–" if v.jobs_failed is None else str(v.jobs_failed),
            "alignlab": v.alignlab or "–",
            "torch": v.torch or "–",
        }
        for v in views
    ]


def publish_supervised(connection: redis.Redis, rows: list[dict[str, Any]]) -> None:
    """What `alignlab up`'s supervisor runs and restarted, for the Workers page (kept a day)."""
    connection.set(SUPERVISED_KEY, json.dumps({"at": time.time(), "rows": rows}), ex=FACTS_TTL_S)


def supervised_table(connection: redis.Redis) -> list[dict[str, Any]]:
    """The processes of `alignlab up` as last published ([] when none runs on this Redis)."""
    raw = connection.get(SUPERVISED_KEY)
    return json.loads(raw)["rows"] if raw else []
