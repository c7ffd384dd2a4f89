"""Batches spread over threads: the engine's parallelism.

Every kernel runs single-threaded (Numba serial, BLAS limited to one
thread), and whole batches run concurrently on ``n_jobs`` threads. Each image
is therefore computed by exactly the same sequence of operations whichever
thread or batch it lands in, which keeps values (and masks) bit-identical.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = ["map_batches", "default_jobs", "single_threaded_blas"]


def default_jobs():
    """Threads to use: ``FASTDECOMP_JOBS`` if set, else every core this process may use."""
    env = os.environ.get("FASTDECOMP_JOBS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread for the duration (threads are ours to spend)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def map_batches(fn, batches, n_jobs=None):
    """Apply ``fn`` to every item of ``batches`` on ``n_jobs`` threads, yielding results in order.

    At most ``2 * n_jobs`` items are in flight, so memory stays bounded by
    the batch size, not by the number of batches.
    """
    n_jobs = n_jobs or default_jobs()
    with single_threaded_blas():
        if n_jobs == 1:
            for item in batches:
                yield fn(item)
            return
        with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="fastdecomp") as pool:
            pending = deque()
            for item in batches:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * n_jobs:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
