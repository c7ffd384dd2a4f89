"""Batches spread over threads: the engine's parallelism.

Every forward kernel runs single-threaded (serial Numba loops, the generated
convolution; no BLAS), and whole batches run concurrently on ``n_jobs``
threads. Each image is therefore computed by exactly the same sequence of
operations whichever thread or batch it lands in, which keeps values (and
masks) bit-identical.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, Full, Queue

from . import config
from .errors import InputError

__all__ = ["map_batches", "read_ahead", "CHUNK_IMAGES"]

CHUNK_IMAGES = 64  # images a thread works on at a time: their activations stay in cache


def chunks(batches, size):
    """Split ``(positions, x, y)`` batches into pieces of at most ``size`` images (views)."""
    for positions, x, y in batches:
        for start in range(0, len(positions), size):
            yield positions[start:start + size], x[start:start + size], y[start:start + size]


def map_batches(fn, batches, n_jobs=None, chunk=None):
    """Apply ``fn`` to ``(positions, x, y)`` pieces of ``batches`` on ``n_jobs`` threads.

    Each batch is cut into pieces of at most ``chunk`` images (default
    :data:`CHUNK_IMAGES`); results are
    yielded in order. At most ``2 * n_jobs`` pieces are in flight, so memory
    stays bounded by the batch size, not by the number of images.

    Parameters
    ----------
    fn : callable
        Called with each ``(positions, x, y)`` piece.
    batches : iterable
        ``(positions, x, y)`` batches.
    n_jobs : int, optional
        Threads (default: :func:`fastdecomp.config.jobs`).
    chunk : int, optional
        Images per piece.
    """
    n_jobs = config.jobs(n_jobs)  # the argument, else FASTDECOMP_JOBS, else every core
    batches = chunks(batches, chunk or CHUNK_IMAGES)
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


class _Raised:
    def __init__(self, exc):
        self.exc = exc


_END = object()


def read_ahead(items, depth=2):
    """Yield the items of ``items``, drawn on a background thread up to ``depth`` ahead of the consumer.

    A device computes while the host reads (and decodes or generates) the next
    batches. The iterable is advanced by that one thread only, in order, so a
    source need not be thread-safe. An exception raised while reading is
    raised here, at the item it replaced; closing this generator stops the
    thread after the read in progress.

    Parameters
    ----------
    items : iterable
    depth : int
        Items read and not yet handed out, at most (1 or more): with the one being read and the one in use,
        ``depth + 2`` batches may be in memory at once.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InputError(f"read_ahead takes a depth of 1 or more, got {depth!r}")
    queue, stop = Queue(maxsize=depth), threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.05)
                return True
            except Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))

    thread = threading.Thread(target=produce, name="fastdecomp-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = queue.get(timeout=0.05)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    raise RuntimeError("the read-ahead thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
