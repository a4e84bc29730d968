"""How many CPUs this process may really use: affinity mask and cgroup CPU quota aware."""

from __future__ import annotations

import functools
import math
import os

# cgroup v2 exposes "max 100000" or "200000 100000" (quota and period in microseconds);
# cgroup v1 splits them in two files.
_CGROUP_V2 = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1 = (
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
)
# Linux's view of this process's memory, in pages (size, resident, ...): what max_worker_memory
# reads after each item. Here, with the other machine facts, so a worker reads it without
# importing the options.
STATM = "/proc/self/statm"


def _read(path: str) -> str:
    """A small file's text (plain ``open``: importing pathlib would slow every worker's start)."""
    with open(path) as file:
        return file.read()


@functools.cache
def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup quota, or None when there is no quota.

    Read once per process: reading the files is a noticeable part of a warm 2-item map, and a
    container's quota does not change under a running program. The affinity mask, a cheap
    system call that a program can change, is read on every call.
    """
    try:
        quota, period = _read(_CGROUP_V2).split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(_read(_CGROUP_V1[0]))
        period_us = int(_read(_CGROUP_V1[1]))
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> int:
    """The number of CPUs this process can run on at once, at least 1.

    The minimum of the scheduler affinity mask and the cgroup quota (rounded up), so a container
    limited to 1.5 CPUs gets 2 workers and one pinned to one core gets 1.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
