"""`alignlab up` supervises every process it starts, the embedded Redis included, and leaves none behind."""

import os
import re
import shutil
import subprocess
import sys

import psutil

from tests.ports import free_port
from tests.test_cli_up import ROOT


def test_up_restarts_a_killed_redis_and_stop_leaves_no_process_not_even_an_orphaned_job(tiny_model_dir, tmp_path):
    """The embedded Redis is SIGKILLed mid-run: `up` restarts it (console and Workers page say so) from its AOF.
    Then the worker is SIGKILLed alone, which leaves its running job's process (the work horse, in a process group
    of its own) parentless. On stop, every process `up` started and every process those started ends, the orphaned
    job included."""
    import signal
    import time

    import redis

    from workers.fleet import supervised_table

    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(home)
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up", "--port", str(free_port()), "--job-process", "fork"]
            + ["--preset", "tiny-ci", "--stages", "[generate_sft, train_sft]", "--sft.num_epochs", "100"]
            + ["--sft.checkpoint_every", "1000"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(predicate, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert up.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        return value

    def descendants():
        return psutil.Process(up.pid).children(recursive=True)

    def named(part):
        found = []
        for proc in descendants():
            try:
                if part in " ".join(proc.cmdline()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return found

    ever: dict[int, psutil.Process] = {}
    try:
        wait_for(lambda: re.search(r"\d\d:\d\d train_sft running", log_path.read_text()), "train_sft to run")
        ever.update({p.pid: p for p in descendants()})
        (server,) = named("redis-server")
        server.kill()
        wait_for(lambda: "redis: restarted (restart 1)" in log_path.read_text(), "the restart of Redis")
        connection = wait_for(lambda: named("redis-server") and _client(home), "Redis answering again")
        assert connection.exists("rq:queues")  # the AOF brought the queues back

        def page_says_restarted():
            try:
                rows = {row["process"]: row for row in supervised_table(connection)}
            except redis.ConnectionError:
                return False
            return rows.get("redis", {}).get("restarts") == 1

        wait_for(page_says_restarted, "the Workers page's facts to show the restart")
        (worker,) = [p for p in named("-m workers --queues") if p.ppid() == up.pid]  # not its horse or scheduler
        horse = wait_for(lambda: [p for p in worker.children() if os.getpgid(p.pid) == p.pid], "the job's process")[0]
        ever.update({p.pid: p for p in descendants()})
        worker.kill()  # the horse lives on, parentless
        wait_for(lambda: "worker: restarted (restart 1)" in log_path.read_text(), "the worker's restart")
        assert horse.is_running() and horse.ppid() != worker.pid
        ever.update({p.pid: p for p in descendants()})
        up.send_signal(signal.SIGTERM)
        up.wait(120)
    finally:
        if up.poll() is None:  # a failed test must not leave servers behind: its children have sessions of their own
            ever.update({p.pid: p for p in descendants()})
            os.killpg(up.pid, signal.SIGKILL)
            for proc in ever.values():
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
    assert "alignlab stopped" in log_path.read_text()
    gone, alive = psutil.wait_procs(list(ever.values()), timeout=30)
    assert alive == [], [p.cmdline() for p in alive]
    assert not horse.is_running(), "the orphaned job's process outlived `alignlab up`"


def _client(home):
    import redis

    from workers.queues import embedded_socket

    try:
        client = redis.Redis(unix_socket_path=str(embedded_socket(home)))
        client.ping()
        return client
    except (redis.ConnectionError, redis.BusyLoadingError):
        return None
