"""Secure by default: Redis auth off loopback, confined paths, secrets that never leave the process that needs them."""

import copy
import os
import subprocess
import sys

import pytest
from sqlalchemy import MetaData, select

from pipeline.errors import ConfigError
from pipeline.paths import confine, confine_spec
from tests.test_cli_up import ROOT
from workers import scheduler
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
    assert scheduler.run_summary(run_id, engine)["status"] == "succeeded"

    haystacks = {
        "database": _everything_in_the_database(engine),
        "redis": _everything_in_redis(redis_conn),  # the event stream, RQ's job hashes and their arguments
        "worker log": log.read_text(errors="replace"),
    }
    assert "train_sft" in haystacks["database"] and "alignlab:events" in haystacks["redis"]
    leaks = [(where, key) for where, text in haystacks.items() for key, value in FAKE_SECRETS.items() if value in text]
    assert leaks == []
