"""How much memory one job may take: a bound the worker puts on the process that runs each job, so that one job (a
pathological input, a leak) fails alone instead of taking the machine, and everything else on it, to the kernel's
out-of-memory killer.

On a CPU worker the kernel enforces it: the job's process gets an address-space limit (`RLIMIT_AS`) of what it had
mapped when the job started plus the limit, so an allocation past it fails at once and the job ends with a
`MemoryError` naming the limit, the worker carrying on. A CUDA process maps terabytes of virtual address space
without using them, so on a GPU worker the limit is watched instead: the job's resident memory above its start is
measured every second and the job's process is ended past the limit.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024
# the default share of the machine's memory one job may take (the rest is the system's, the dashboard's, Redis's)
DEFAULT_SHARE = 0.8
ENV_VAR = "ALIGNLAB_JOB_MEMORY_MB"


@dataclass
class JobMemoryLimit:
    limit_bytes: int
    enforce_address_space: bool  # False on a GPU worker: watched, not enforced by the kernel
    _baseline_rss: int = 0

    @classmethod
    def from_setting(cls, megabytes: int | None, enforce_address_space: bool) -> JobMemoryLimit | None:
        """The limit for `--memory-limit-mb` (or ALIGNLAB_JOB_MEMORY_MB): None or absent → 80% of this machine's
        memory; 0 → no limit."""
        if megabytes is None:
            env = os.environ.get(ENV_VAR)
            megabytes = int(env) if env else int(psutil.virtual_memory().total * DEFAULT_SHARE / MIB)
        if megabytes <= 0:
            return None
        return cls(megabytes * MIB, enforce_address_space)

    def describe(self) -> str:
        how = "address space" if self.enforce_address_space else "resident memory, watched"
        return f"{self.limit_bytes // MIB} MiB above the job's start, {how}"

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The limit on this process for the duration of one job; the previous limit restored after it."""
        process = psutil.Process()
        info = process.memory_info()
        self._baseline_rss = info.rss
        if not self.enforce_address_space:
            yield
            return
        previous = resource.getrlimit(resource.RLIMIT_AS)
        ceiling = info.vms + self.limit_bytes
        hard = previous[1]
        if hard != resource.RLIM_INFINITY:
            ceiling = min(ceiling, hard)
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_AS, previous)

    def exceeded(self) -> bool:
        """Whether the job's resident memory grew past the limit (the watched form; the kernel's is exact)."""
        if self.enforce_address_space:
            return False
        return psutil.Process().memory_info().rss - self._baseline_rss > self.limit_bytes
