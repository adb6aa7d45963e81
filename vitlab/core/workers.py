"""Worker process pools that end with the stage that started them.

A stage killed mid-way (SIGKILL, the OOM killer) must not leave its pool's workers behind: they
would hold its stdout open, so whoever reads it (a test, a flow, a terminal pipe) waits for
ever, and keep their memory. A pool's queues do not tell them: each worker holds a writing end
of its own call queue. So on Linux each worker asks the kernel to kill it when its parent dies.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def process_pool(workers: int, *, spawn: bool = False) -> ProcessPoolExecutor:
    """`workers` processes that die with this one. `spawn` starts them fresh instead of the
    platform's default (a fork of this process on Linux): needed once torch's thread pools run
    here, which a forked child must not inherit."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn") if spawn else None,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


def per_core(limit: int = 8) -> int:
    """One worker per core this process may run on, at most `limit`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, limit))


def split_range(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into `parts` contiguous (lo, hi) pieces whose sizes differ by at most one."""
    n = hi - lo
    return list(itertools.pairwise(lo + n * k // parts for k in range(parts + 1)))


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence, workers: int) -> list:
    """`fn` over `jobs`, results in order: in a `process_pool` of `workers`, or here for one."""
    if workers > 1:
        with process_pool(workers) as pool:
            return list(pool.map(fn, jobs))
    return [fn(job) for job in jobs]
