"""`alignlab up`'s process supervisor: restart a child that dies (with backoff and a count shown), and on stop end
every process it started, the worker's job processes included.

RQ's work horse puts itself in a process group of its own (`os.setpgrp`), so signalling the worker's group does
not reach a running job: the supervisor takes the whole process tree (psutil) before it stops anything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long before dying starts again at the shortest backoff
STOP_GRACE_S = 15.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    restart_at: float | None = None  # set while it waits to be started again
    exit_codes: list[int] = field(default_factory=list)


def _tree(child: Child) -> list[psutil.Process]:
    """A running child and every process below it; [] when it is not running."""
    if child.proc is None or child.proc.poll() is not None:
        return []
    try:
        parent = psutil.Process(child.proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Supervisor:
    """Starts children, restarts the ones that exit, and stops the whole tree: every process a child started, also
    one left behind when its parent died (a work horse whose worker crashed is reparented to init, out of the tree:
    each poll remembers every descendant it sees)."""

    def __init__(self, cwd: Path, out=None, log_dir: Path | None = None):
        """`log_dir`: each child's stdout and stderr go to `<log_dir>/<name>.log` (appended), not the terminal."""
        self.cwd = cwd
        self.children: dict[str, Child] = {}
        self.seen: dict[int, psutil.Process] = {}  # every descendant seen (psutil checks a pid is still that process)
        self.out = out or sys.stdout
        self.log_dir = log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir is not None else None

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start(self, name: str, argv: list[str]) -> Child:
        child = self.children.setdefault(name, Child(name, argv))
        log = self.log_path(name)
        sink = open(log, "ab") if log is not None else None  # noqa: SIM115  (the child holds it; closed below)
        try:
            child.proc = subprocess.Popen(argv, cwd=self.cwd, start_new_session=True, stdout=sink, stderr=sink)
        finally:
            if sink is not None:
                sink.close()  # the child has its own descriptor
        child.started_at, child.restart_at = time.monotonic(), None
        return child

    def _remember_descendants(self) -> None:
        for child in self.children.values():
            for proc in _tree(child):
                self.seen.setdefault(proc.pid, proc)
        self.seen = {pid: proc for pid, proc in self.seen.items() if proc.is_running()}

    def poll(self) -> None:
        """Notice children that exited and restart them once their backoff has passed."""
        self._remember_descendants()
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.start(child.name, child.argv)
                    self._say(f"{child.name}: restarted (restart {child.restarts})")
                continue
            code = child.proc.poll() if child.proc else None
            if code is None:
                continue
            child.exit_codes.append(code)
            if now - child.started_at > STABLE_AFTER_S:
                child.backoff_s = BACKOFF_START_S
            child.restart_at = now + child.backoff_s
            log = self.log_path(child.name)
            self._say(
                f"{child.name}: exited with code {code}; restarting in {child.backoff_s:.0f} s "
                f"({child.restarts} restarts so far)" + (f"; its output: {log}" if log else "")
            )
            child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)

    def restarts(self) -> dict[str, int]:
        return {name: child.restarts for name, child in self.children.items()}

    def status_rows(self) -> list[dict]:
        """One row per supervised process: what the Workers page shows under `alignlab up`."""
        return [
            {
                "process": child.name,
                "state": "restarting" if child.restart_at is not None else "running",
                "pid": child.proc.pid if child.proc is not None and child.restart_at is None else None,
                "restarts": child.restarts,
                "last exit code": child.exit_codes[-1] if child.exit_codes else None,
            }
            for child in self.children.values()
        ]

    def stop(self, grace_s: float = STOP_GRACE_S, last: list[str] | None = None) -> None:
        """SIGTERM every child (a worker checkpoints its job and requeues it), wait, then SIGKILL whatever of the
        tree is left: children, their work horses, anything those started, and any descendant seen earlier that
        outlived its parent. The children named in `last` are stopped the same way after all the others."""
        last = [name for name in (last or []) if name in self.children]
        self._stop_group([c for name, c in self.children.items() if name not in last], grace_s, orphans=True)
        self._stop_group([self.children[name] for name in last], grace_s, orphans=False)

    def _stop_group(self, children: list[Child], grace_s: float, orphans: bool) -> None:
        self._remember_descendants()
        tree: list[psutil.Process] = []
        if orphans:  # descendants that lost their parent (it died) are ours to end too
            living = {proc.pid for child in self.children.values() for proc in _tree(child)}
            tree += [p for pid, p in self.seen.items() if pid not in living and p.is_running()]
        for child in children:
            child.restart_at = None  # stopping: never started again
            running = _tree(child)
            if running:
                tree += running
                child.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for proc in alive:
            try:
                tree += proc.children(recursive=True)  # started during the grace period
            except psutil.NoSuchProcess:
                pass
        for proc in {p.pid: p for p in tree}.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=5)
        for child in children:
            if child.proc is not None:
                try:
                    child.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._say(f"{child.name}: pid {child.proc.pid} did not exit")
