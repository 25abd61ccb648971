"""How many CPUs this process may use, and torch's threads to match: the CPUs of its affinity
mask, fewer where its cgroup's quota allows less (a cluster job's --cpus-per-task, a
container's --cpus), never the host's core count. `--threads N` sets the count for a script;
every script and the attention editor call `use_threads` once."""
from __future__ import annotations

import math
import os

import torch

CGROUP_V2 = '/sys/fs/cgroup/cpu.max'
CGROUP_V1 = ('/sys/fs/cgroup/cpu/cpu.cfs_quota_us', '/sys/fs/cgroup/cpu/cpu.cfs_period_us')


def affinity_cpus() -> int:
    """The CPUs the scheduler lets this process run on."""
    if hasattr(os, 'sched_getaffinity'):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def quota_cpus(v2: str | None = None, v1: tuple[str, str] | None = None) -> float | None:
    """The CPUs the cgroup's quota is worth (quota / period), or None where there is none
    (cgroup v2's cpu.max, else v1's cfs quota and period)."""
    v2, v1 = v2 or CGROUP_V2, v1 or CGROUP_V1
    try:
        with open(v2) as f:
            quota, period = f.read().split()[:2]
        return None if quota == 'max' else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(v1[0]) as f:
            quota = int(f.read())
        with open(v1[1]) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_budget() -> int:
    """The whole CPUs this process may use: its affinity, capped by its quota (rounded up: a
    quota of 1.5 CPUs runs two threads at three quarters each, better than one)."""
    budget = affinity_cpus()
    quota = quota_cpus()
    if quota is not None:
        budget = min(budget, max(1, math.ceil(quota)))
    return budget


def use_threads(threads: int | None = None, reserved: int = 0) -> int:
    """Sets torch's intra-op threads: `threads` when given, else the CPU budget less the CPUs
    `reserved` for other busy processes of the same job (data loader workers), at least one.
    Returns the count."""
    count = threads if threads else max(1, cpu_budget() - reserved)
    torch.set_num_threads(count)
    return count


def check_threads(threads: int | None) -> None:
    from utils.errors import AbnError
    if threads is not None and threads < 1:
        raise AbnError(f'--threads must be at least 1, got {threads}')
