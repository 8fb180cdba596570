"""`alignlab up` on its embedded defaults, and the queue CLI against it."""

import os
import re
import shutil
import subprocess
import sys

import psutil

from tests.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    # one line per stage change, with the time since start; library logs and progress bars in files
    lines = out.stdout.splitlines()
    (sft,) = [line for line in lines if re.fullmatch(r"\d\d:\d\d train_sft succeeded \(\d+\.\d s\)", line)]
    assert len([line for line in lines if " generate_sft succeeded" in line]) == 1
    assert not [line for line in lines if "INFO" in line or "rq.worker" in line or "it/s]" in line]
    assert f"logs: {home / 'logs'}/" in out.stdout
    assert "Job OK" in (home / "logs" / "worker.log").read_text()  # RQ's own lines, kept where they can be read
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
    assert "tiny-ci" in runs.stdout and "3/3" in runs.stdout  # the split, generate_sft, train_sft
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


def test_up_restarts_a_dead_recorder_and_stops_every_process_it_started(tiny_model_dir, tmp_path):
    import signal
    import time

    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(home)
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up", "--port", str(free_port()), "--preset", "tiny-ci"]
            + ["--stages", "[generate_sft, train_sft]", "--sft.num_epochs", "100", "--sft.checkpoint_every", "1000"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def children(name_part):
        found = []
        for proc in psutil.Process(up.pid).children(recursive=True):
            try:
                if name_part in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.NoSuchProcess:
                pass
        return found

    def wait_for(predicate, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert up.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        return value

    try:
        wait_for(lambda: re.search(r"\d\d:\d\d train_sft running", log_path.read_text()), "train_sft to run")
        worker = wait_for(lambda: children("-m workers --queues"), "the worker")[0]
        # `up`'s worker runs its jobs in its own process (`--job-process reuse`): training, with no work horse
        assert "--job-process reuse" in " ".join(worker.cmdline())
        assert [p for p in worker.children() if os.getpgid(p.pid) == p.pid] == []
        (recorder,) = children("workers.recorder")
        recorder.kill()
        wait_for(lambda: "recorder: restarted (restart 1)" in log_path.read_text(), "the recorder's restart")
        (restarted,) = wait_for(lambda: children("workers.recorder"), "a new recorder")
        assert restarted.pid != recorder.pid
        started = psutil.Process(up.pid).children(recursive=True)  # recorder, worker (with its job), dashboard, redis
        assert worker.pid in {p.pid for p in started}
        up.send_signal(signal.SIGTERM)
        up.wait(120)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert "recorder: exited with code -9" in text and "alignlab stopped (restarts: recorder 1)" in text
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]  # the worker that was training too, not an orphan


def test_up_says_each_stage_change_once_with_the_time_since_start():
    from workers.cli import stage_changes

    def summary(status, *stages):
        keys = ("node", "status", "seconds", "error")
        return {"id": 7, "status": status, "stages": [dict(zip(keys, s, strict=True)) for s in stages]}

    seen = {}
    plan = summary("queued", ("split", "queued", None, None), ("compare", "queued", None, None))
    assert stage_changes(seen, plan, 0.2) == ["00:00 queued: split, compare"]  # the plan in one line
    assert stage_changes(seen, plan, 1.0) == []
    failed = summary("failed", ("split", "failed", 5.43, "boom"), ("compare", "cancelled", None, None))
    assert stage_changes(seen, failed, 61.0) == [
        "01:01 split failed (5.4 s): boom",
        "01:01 compare cancelled",
        "01:01 run 7 failed",
    ]
    assert stage_changes(seen, failed, 62.0) == []
    assert stage_changes(seen, summary("queued", ("split", "queued", None, None)), 70.0) == ["01:10 split queued"]
