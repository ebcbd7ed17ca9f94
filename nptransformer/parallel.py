"""Intra-op threads: one op's work split over the CPU's cores.

NumPy runs each elementwise operator and reduction on one core; only its
BLAS uses more. On a 2-core machine that left half of a training step (GELU,
softmax, layer norm, the optimizer, attention's small products) on one core
while the other idled (docs/performance.md). ``set_num_threads(n)`` starts
n - 1 worker threads; the ops then cut their large arrays into n slabs of
rows and compute the slabs at once, the calling thread taking the first.
NumPy releases the GIL inside every operator and BLAS call, so the slabs
really run in parallel.

While the pool runs, BLAS is held to one thread (through ``threadpoolctl``,
the ``threads`` extra) and the GEMMs are split by the same pool, for two
reasons measured on that machine: a second BLAS thread spin-waits after
each product, taking the core the pool's worker needs (a GELU split over
two threads took longer than on one), and every thread calling a
multithreaded BLAS would ask for n x n threads.

>>> import nptransformer as npt
>>> npt.get_num_threads()
1

Only the NumPy backend splits work: a GPU runs one kernel per operator, and
``array_api_strict`` has no reason to. With the default of one thread
nothing here runs, and the ops are exactly what they were.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

from . import _checks

#: Below this many elements a split costs more (about 20 us to wake a worker) than it saves.
MIN_ELEMENTS = 1 << 15


class _Pool:
    """n - 1 daemon workers, each with its own task queue; the caller computes part 0."""

    def __init__(self, n: int):
        self.size = n
        self._lock = threading.Lock()  # one split at a time; a second caller runs its parts itself
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._tasks = [queue.SimpleQueue() for _ in range(n - 1)]
        self._threads = [threading.Thread(target=self._work, args=(q,), daemon=True, name=f"nptransformer-{i + 1}")
                         for i, q in enumerate(self._tasks)]
        for t in self._threads:
            t.start()

    def _work(self, tasks: queue.SimpleQueue) -> None:
        _local.in_worker = True
        while (task := tasks.get()) is not None:
            fn, args = task
            try:
                fn(*args)
                self._done.put(None)
            except BaseException as error:  # handed to the caller, which raises it
                self._done.put(error)

    def run(self, fn: Callable[..., Any], parts: Sequence[tuple]) -> None:
        """fn(*parts[i]) for every i, parts[1:] on the workers, parts[0] here; the first error is raised."""
        if getattr(_local, "in_worker", False) or not self._lock.acquire(blocking=False):
            for args in parts:  # called from a worker, or another thread holds the pool
                fn(*args)
            return
        try:
            for q, args in zip(self._tasks, parts[1:]):
                q.put((fn, args))
            error: BaseException | None = None
            try:
                fn(*parts[0])
            except BaseException as e:
                error = e
            for _ in parts[1:]:  # wait for every worker even after an error: they write into shared outputs
                result = self._done.get()
                error = error or result
        finally:
            self._lock.release()
        if error is not None:
            raise error

    def close(self) -> None:
        for q in self._tasks:
            q.put(None)
        for t in self._threads:
            t.join()


_local = threading.local()
_pool: _Pool | None = None
_blas_limit: Any = None  # threadpoolctl's handle while BLAS is held to one thread


def get_num_threads() -> int:
    """The number of threads the ops split their work over (1: no splitting)."""
    return 1 if _pool is None else _pool.size


def set_num_threads(n: int) -> None:
    """Split large ops over ``n`` threads (the caller plus n - 1 workers); 1 stops the workers.

    With n > 1, NumPy's BLAS is held to one thread until ``set_num_threads(1)``
    restores its previous count; that needs ``threadpoolctl``
    (``pip install "nptransformer[threads]"``).
    """
    global _pool, _blas_limit
    _checks.check_int_at_least("n", n, 1)
    if n == get_num_threads():
        return
    if n > 1 and _blas_limit is None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            raise ImportError('set_num_threads(n > 1) needs threadpoolctl to hold BLAS to one thread: '
                              'pip install "nptransformer[threads]"') from None
        _blas_limit = threadpool_limits(limits=1, user_api="blas")
    if _pool is not None:
        _pool.close()
        _pool = None
    if n > 1:
        _pool = _Pool(n)
    elif _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``set_num_threads(n)`` inside the block, the previous count after it."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def slabs(length: int, elements: int) -> list[tuple[int, int]]:
    """How to cut ``length`` rows holding ``elements`` elements in all: [(start, stop), ...], one per thread.

    A single slab (0, length) when the pool is off, the work is below
    MIN_ELEMENTS, or there are fewer rows than threads.
    """
    n = max(1, min(get_num_threads(), length, elements // MIN_ELEMENTS))
    bounds = [length * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def balanced(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Cut a list of items of the given sizes into contiguous runs of about equal total size, one per thread.

    [(start, stop), ...] over item indices, as :func:`slabs` gives; one run
    when the pool is off or the total is below MIN_ELEMENTS.
    """
    total = sum(sizes)
    n = max(1, min(get_num_threads(), len(sizes), total // MIN_ELEMENTS))
    cuts, acc, k = [0], 0, 1
    for i, size in enumerate(sizes[:-1]):
        acc += size
        if k < n and acc >= total * k / n:  # cut after the item that crosses the next k/n of the total
            cuts.append(i + 1)
            k += 1
    cuts.append(len(sizes))
    return list(zip(cuts[:-1], cuts[1:]))


def run(fn: Callable[[int, int], Any], parts: Sequence[tuple[int, int]]) -> None:
    """``fn(start, stop)`` for each slab of ``parts`` (from :func:`slabs`), in parallel when there are several."""
    if len(parts) == 1 or _pool is None:
        for start, stop in parts:
            fn(start, stop)
    else:
        _pool.run(fn, parts)
