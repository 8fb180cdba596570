"""A disk that fills up while an artifact is written, and a Redis restarted mid-run (AOF on)."""

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import select

from db.models import Metric
from db.session import read_session
from tests.conftest import add_stage_run
from tests.ports import free_port
from workers.events import EventEmitter
from workers.recorder import Recorder

ROOT = Path(__file__).resolve().parents[2]

# A size-limited disk without privileges: RLIMIT_FSIZE makes every write past the limit fail with EFBIG
# (SIGXFSZ ignored), which is what the stage sees from a full volume (ENOSPC) too: an OSError mid-write.
FULL_DISK_CHILD = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from pipeline.core.configs import RunSpec, from_dict
from pipeline.core.registry import node_by_name
from pipeline.dag import artifact_keys, default_store, run_node
spec = from_dict(RunSpec, json.loads(sys.argv[1]))
store, keys = default_store(sys.argv[2]), artifact_keys(spec)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    run_node(spec, store, node_by_name("train_sft"), keys)
except Exception as exc:  # OSError from Python's writes, SafetensorError from the Rust writer
    print("FAILED", type(exc).__name__, exc)
    sys.exit(3)
print("completed")
"""


def test_disk_full_while_writing_an_artifact_fails_the_stage_without_a_complete_marker(
    dag_run, tiny_ci_spec, alignlab_home
):
    from pipeline.core.configs import to_dict
    from pipeline.dag import artifact_keys, default_store

    spec = copy.deepcopy(tiny_ci_spec)
    spec.sft.learning_rate = 7e-4  # a train_sft artifact that does not exist yet; its inputs do (dag_run)
    limit = 64 * 1024  # the adapter and checkpoints are larger than this
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, json.dumps(to_dict(spec)), str(alignlab_home), str(limit)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-3000:]
    assert "FAILED" in out.stdout and "File too large" in out.stdout  # EFBIG, as ENOSPC would be "No space left"
    store = default_store(alignlab_home)
    key = artifact_keys(spec)["train_sft"]
    assert not store.is_complete(key)
    assert not (store.path(key) / "COMPLETE").exists()

    # once there is room again, the same stage completes (resuming from what the partial directory holds)
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, json.dumps(to_dict(spec)), str(alignlab_home), str(2**40)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "completed" in out.stdout, out.stderr[-3000:]
    assert store.is_complete(key)


def _redis_server(port: int, directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def test_redis_killed_and_restarted_mid_run_loses_no_event(tmp_path, engine):
    port = free_port()
    server = _redis_server(port, tmp_path)
    try:
        conn = redis.Redis(port=port)
        run_id, stage_run_id = add_stage_run(engine)
        emitter = EventEmitter(conn, run_id, stage_run_id)
        for step in range(1, 301):
            emitter.emit("metric", step=step, values={"loss": 1.0 / step})
        Recorder(conn, engine, consumer="before").drain()  # part is recorded, part still in the stream
        for step in range(301, 601):
            emitter.emit("metric", step=step, values={"loss": 1.0 / step})

        server.send_signal(signal.SIGKILL)  # no shutdown save: only the append-only file survives
        server.wait(10)
        server = _redis_server(port, tmp_path)

        conn = redis.Redis(port=port)
        emitter = EventEmitter(conn, run_id, stage_run_id)
        for step in range(601, 901):
            emitter.emit("metric", step=step, values={"loss": 1.0 / step})
        Recorder(conn, engine, consumer="after").drain()
        with read_session(engine) as s:
            steps = s.scalars(select(Metric.step).where(Metric.stage_run_id == stage_run_id).order_by(Metric.step))
            assert list(steps) == list(range(1, 901))  # nothing lost, nothing twice
    finally:
        server.kill()
        server.wait(10)
