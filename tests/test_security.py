"""Secure by default: Redis auth off loopback, confined paths, secrets that never leave the process that needs them."""

import copy
import os
import subprocess
import sys

import pytest
from sqlalchemy import MetaData, select

from pipeline.core.errors import ConfigError
from pipeline.paths import confine, confine_spec
from tests.test_cli_up import ROOT
from workers import commands, scheduler
from workers.queues import connect, require_password_off_loopback
from workers.recorder import Recorder

FAKE_SECRETS = {
    "HF_TOKEN": "hf_FAKEtoken0123456789abcdefXYZ",
    "HUGGING_FACE_HUB_TOKEN": "hf_FAKEhubtoken987654321zyxw",
    "RUNPOD_API_KEY": "rpa_FAKEkey_5b1f0c9e2d7a4e31",
    "WANDB_API_KEY": "fakewandb0123456789abcdef0123456789abcdef",
}


@pytest.mark.parametrize(
    "url",
    ["redis://10.0.0.5:6379/0", "rediss://redis.example.org:6380/0", "redis://user@203.0.113.9/1"],
)
def test_a_network_redis_without_a_password_is_refused(url):
    with pytest.raises(ConfigError, match="no password"):
        connect(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost/0",
        "unix:///tmp/redis.sock",
        "redis://:s3cret@10.0.0.5:6379/0",
        "rediss://default:s3cret@redis.example.org:6380/0",
    ],
)
def test_loopback_sockets_and_password_urls_are_accepted(url):
    require_password_off_loopback(url)


def test_paths_outside_the_allowed_roots_are_rejected(tmp_path):
    root = tmp_path / "home"
    (root / "data").mkdir(parents=True)
    (root / "data" / "ok.jsonl").write_text("{}\n")
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("{}\n")
    (root / "data" / "link.jsonl").symlink_to(outside)
    confine(str(root / "data" / "ok.jsonl"), "DataConfig.instructions", [root])
    for value in (
        str(outside),
        str(root / "data" / ".." / ".." / "elsewhere.jsonl"),  # traversal
        str(root / "data" / "link.jsonl"),  # a symlink out
        "/etc/passwd",
    ):
        with pytest.raises(ConfigError, match="DataConfig.instructions: .* outside the directories"):
            confine(value, "DataConfig.instructions", [root])
    for value in ("demo", "blob:" + "0" * 64, "Qwen/Qwen2.5-0.5B-Instruct", "alignlab-tiny"):
        confine(value, "ModelConfig.name_or_path", [root])  # not paths


def test_submit_refuses_a_spec_reading_outside_the_roots(tiny_ci_spec, redis_conn, engine):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.base_model.adapter = "/etc"
    with pytest.raises(ConfigError, match="ModelConfig.adapter"):
        scheduler.submit(spec, redis_conn, engine)
    with pytest.raises(ConfigError):
        confine_spec(spec)
    assert redis_conn.llen("rq:queue:gpu") == 0


def _everything_in_redis(conn) -> str:
    parts = []
    for key in conn.scan_iter("*"):
        kind = conn.type(key).decode()
        if kind == "string":
            parts.append(repr(conn.get(key)))
        elif kind == "hash":
            parts.append(repr(conn.hgetall(key)))
        elif kind == "list":
            parts.append(repr(conn.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(repr(conn.smembers(key)))
        elif kind == "zset":
            parts.append(repr(conn.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(repr(conn.xrange(key)))
        parts.append(repr(key))
    return "\n".join(parts)


def _everything_in_the_database(engine) -> str:
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as c:
        return "\n".join(repr(row) for table in meta.sorted_tables for row in c.execute(select(table)))


def test_tokens_in_the_environment_reach_no_database_event_job_or_log(
    tiny_model_dir, tiny_ci_spec, redis_conn, redis_server_url, engine, alignlab_home, tmp_path
):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.stages = ["generate_sft", "train_sft"]
    run_id = scheduler.submit(spec, redis_conn, engine)
    env = {**os.environ, **FAKE_SECRETS, "REDIS_URL": redis_server_url, "ALIGNLAB_HOME": str(alignlab_home)}
    log = tmp_path / "worker.log"
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, "-m", "workers", "--queues", "gpu,cpu", "--burst", "--no-preload"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=True,
        )
    Recorder(redis_conn, engine).drain()
    assert commands.run_summary(run_id, engine)["status"] == "succeeded"

    haystacks = {
        "database": _everything_in_the_database(engine),
        "redis": _everything_in_redis(redis_conn),  # the event stream, RQ's job hashes and their arguments
        "worker log": log.read_text(errors="replace"),
    }
    assert "train_sft" in haystacks["database"] and "alignlab:events" in haystacks["redis"]
    leaks = [(where, key) for where, text in haystacks.items() for key, value in FAKE_SECRETS.items() if value in text]
    assert leaks == []


# ------------------------------------------------------------------------ blob references, roots, job allowlist


@pytest.mark.parametrize(
    "reference",
    ["blob:/etc/passwd", "blob:../../etc/passwd", "blob:" + "0" * 63, "blob:" + "A" * 64, "blob:" + "0" * 64 + "/x"],
)
def test_a_blob_reference_is_a_sha256_digest_and_nothing_else(tiny_ci_spec, redis_conn, engine, reference):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions = reference
    with pytest.raises(ConfigError, match="DataConfig.instructions: .* sha256"):
        scheduler.submit(spec, redis_conn, engine)
    assert redis_conn.llen("rq:queue:gpu") == 0 and redis_conn.llen("rq:queue:cpu") == 0


def test_the_cli_refuses_a_blob_path_before_anything_is_queued(tmp_path, redis_server_url):
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"instruction": "the secret"}\n')
    env = {**os.environ, "REDIS_URL": redis_server_url, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "submit",
            "--preset",
            "tiny-ci",
            "--data.instructions",
            f"blob:{outside}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "sha256" in out.stderr and "Traceback" not in out.stderr


def test_a_materialized_blob_is_re_hashed_on_read(tmp_path):
    import hashlib

    from pipeline.core.errors import DataError
    from pipeline.paths import blob_path, read_blob

    data = b'{"instruction": "Name a colour."}\n'
    reference = "blob:" + hashlib.sha256(data).hexdigest()
    path = blob_path(tmp_path, reference)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert read_blob(tmp_path, reference) == path
    path.write_bytes(b'{"instruction": "something else"}\n')  # changed on the worker's disk
    with pytest.raises(DataError, match="no longer matches its sha256"):
        read_blob(tmp_path, reference)


def test_submit_has_no_home_and_a_job_cannot_widen_the_workers_roots(tiny_ci_spec, tmp_path):
    import inspect

    from workers.cli import build_full_parser
    from workers.jobs import run_stage_job

    assert list(inspect.signature(run_stage_job).parameters) == ["run_id", "stage_run_id", "node", "spec"]
    assert "home" not in inspect.signature(scheduler.submit).parameters
    with pytest.raises(SystemExit):
        build_full_parser().parse_args(["submit", "--preset", "tiny-ci", "--home", str(tmp_path)])
    # the roots a job is checked against are the worker's own, whatever a caller might hope for
    spec = copy.deepcopy(tiny_ci_spec)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data.jsonl").write_text('{"instruction": "x"}\n')
    spec.data.instructions = str(tmp_path / "elsewhere" / "data.jsonl")
    with pytest.raises(ConfigError, match="outside the directories"):
        confine_spec(spec)


def _enqueue_allowlisted(redis_conn, **options):
    import time

    from workers.queues import queue

    return queue("cpu", redis_conn).enqueue_call("workers.jobs.ping_job", args=(time.time(),), **options)


def _run_one_job(redis_conn):
    from rq import SimpleWorker

    from workers.queues import SERIALIZER, AllowlistJob, queue

    SimpleWorker([queue("cpu", redis_conn)], connection=redis_conn, serializer=SERIALIZER, job_class=AllowlistJob).work(
        burst=True
    )


@pytest.mark.parametrize("hook", ["on_success", "on_failure", "on_stopped"])
def test_a_job_with_a_callback_is_refused_and_its_callbacks_never_run(redis_conn, hook):
    from rq import Callback

    from tests.callback_probe import PROBE_KEY
    from workers.queues import fetch_job

    job = _enqueue_allowlisted(redis_conn, **{hook: Callback("tests.callback_probe.record")})
    _run_one_job(redis_conn)
    job = fetch_job(job.id, redis_conn)
    assert job.get_status() == "failed"
    exc = job.latest_result().exc_string
    assert f"{hook}=tests.callback_probe.record" in exc and "nothing else" in exc
    assert redis_conn.get(PROBE_KEY) is None  # neither the named callback nor any other ran


def test_a_job_with_a_webhook_is_refused_and_the_worker_never_connects(redis_conn):
    import socket
    import threading

    from rq import Webhook

    from workers.queues import fetch_job

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    connections = []

    def accept():
        try:
            connections.append(server.accept())
        except OSError:
            pass

    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    job = _enqueue_allowlisted(redis_conn, webhooks=[Webhook(url, "failed", timeout=1)])
    _run_one_job(redis_conn)
    listener = threading.Thread(target=accept)
    listener.start()
    listener.join()  # the webhook would have been sent while the job ran: anything pending is accepted now
    server.close()
    assert connections == []
    job = fetch_job(job.id, redis_conn)
    assert job.get_status() == "failed" and f"webhook {url}" in job.latest_result().exc_string


def test_a_plain_allowlisted_job_still_runs(redis_conn):
    from workers.queues import fetch_job

    job = _enqueue_allowlisted(redis_conn)
    _run_one_job(redis_conn)
    assert fetch_job(job.id, redis_conn).get_status() == "finished"
