"""`alignlab up` on its embedded defaults, and the queue CLI against it."""

import os
import shutil
import subprocess
import sys

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_servers_in(directory):
    found = []
    for proc in psutil.process_iter(["name", "cwd"]):
        try:
            if "redis-server" in (proc.info["name"] or "") and str(directory) in (proc.info["cwd"] or ""):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_up_runs_a_submitted_run_on_embedded_redis_and_leaves_no_orphan(tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)  # skip rebuilding the tiny model
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(home)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "up",
            "--preset",
            "tiny-ci",
            "--stages",
            "[generate_sft, train_sft]",
            "--exit-when-done",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "redis: embedded" in out.stdout and "run 1 succeeded" in out.stdout and "alignlab stopped" in out.stdout
    assert "dashboard: http://127.0.0.1:" in out.stdout
    assert redis_servers_in(home / "redis") == []  # the owner shut its server down
    assert (home / "redis" / "appendonly.aof").exists()
    # the database it left behind answers the CLI
    status = subprocess.run(
        [sys.executable, "-m", "workers.cli", "status", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "succeeded" in status.stdout and "train_sft" in status.stdout
    runs = subprocess.run(
        [sys.executable, "-m", "workers.cli", "runs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert "tiny-ci" in runs.stdout and "2/2" in runs.stdout
    # without `up` and without REDIS_URL, submit says what to do instead of hanging
    submit = subprocess.run(
        [sys.executable, "-m", "workers.cli", "submit", "--preset", "tiny-ci"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 2 and "alignlab up" in submit.stderr
