"""Intra-op threads: one op's work split over the CPU's cores.

NumPy runs each elementwise operator and reduction on one core; only its
BLAS uses more. ``set_num_threads(n)`` starts n - 1 worker threads; the ops
then cut their large arrays into n slabs (of rows, of a product's rows,
columns or inner axis, of the attention's batch, of the optimizer's
parameters) and compute the slabs at once, the calling thread taking the
first and any that no worker has started yet. NumPy releases the GIL inside
every operator and BLAS call, so the slabs run in parallel; what they gain
is measured in docs/performance.md. Products gain the most (a BLAS call
holds the GIL for microseconds and runs for milliseconds); short
elementwise operators gain the least, as the two threads wait on the GIL
between operators and share one memory bus.

While the pool runs, BLAS is held to one thread (through ``threadpoolctl``
when installed, else through the BLAS's own functions:
:mod:`nptransformer.blas_control`) and the GEMMs are split by the same pool, for two
reasons measured on a 2-core machine: a second BLAS thread spin-waits after
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

import collections
import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

from . import _checks, blas_control

#: Below this many elements a split costs more (about 20 us to wake a worker) than it saves.
MIN_ELEMENTS = 1 << 15


class _Part:
    """One slab of a split, run by whichever thread claims it first: a worker, or the caller."""

    __slots__ = ("_fn", "_args", "_claimed", "_done", "_error")

    def __init__(self, fn: Callable[..., Any], args: tuple):
        self._fn, self._args = fn, args
        self._claimed = False
        self._done = threading.Event()
        self._error: BaseException | None = None

    def claim(self) -> bool:
        with _claims:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def execute(self) -> None:
        try:
            self._fn(*self._args)
        except BaseException as error:  # re-raised by the caller in wait()
            self._error = error
        finally:
            self._done.set()

    def finished(self) -> bool:
        """Whether the part has run (by any thread)."""
        return self._done.is_set()

    def wait(self) -> None:
        """Run the part here if no worker has claimed it, else wait for the worker; raise its error."""
        if self.claim():
            self.execute()
        self._done.wait()
        if self._error is not None:
            raise self._error


_claims = threading.Lock()  # who runs a part is decided under this lock


class _Pool:
    """n - 1 daemon workers taking parts from one queue.

    The caller never waits for a part that no worker has started: it runs
    such parts itself. A worker that is slow to wake (a busy machine) then
    costs nothing, where a pool that waits for its workers would wait for
    the scheduler.
    """

    def __init__(self, n: int):
        self.size = n
        self._ready = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._closing = False
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"nptransformer-{i + 1}")
                         for i in range(n - 1)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        _local.in_worker = True
        while True:
            with self._ready:
                while not (self._queue or self._closing):
                    self._ready.wait()
                if not self._queue:
                    return  # closing, and nothing left
                part = self._queue.popleft()
            if part.claim():
                part.execute()

    def run(self, fn: Callable[..., Any], parts: Sequence[tuple]) -> None:
        """fn(*parts[i]) for every i: parts[1:] offered to the workers, parts[0] here; the first error is raised."""
        self._offer(fn, parts[1:], lambda offered: fn(*parts[0]))

    def pipeline(self, produce: Callable[..., Any], consume: Callable[..., Any], parts: Sequence[tuple]) -> None:
        """produce(*part) for every part, offered to the workers in order; consume(*part) here, in order, once its
        part is produced. While its next part is still being produced, this thread produces later parts that no
        worker has started. The first error is raised, after every produced part has finished."""

        def here(offered: list) -> None:
            for i, part in enumerate(offered):
                for later in offered[i:]:
                    if part.finished():
                        break
                    if later.claim():
                        later.execute()
                part.wait()
                consume(*parts[i])

        self._offer(produce, parts, here)

    def _offer(self, fn: Callable[..., Any], parts: Sequence[tuple], here: Callable[[list], Any]) -> None:
        """Offer fn(*part) for each part to the workers, run ``here(offered parts)`` on this thread, then run
        what no worker took and wait for the rest (they write into shared outputs); the first error is raised."""
        offered = [_Part(fn, args) for args in parts]
        with self._ready:
            self._queue.extend(offered)
            self._ready.notify(len(offered))
        error: BaseException | None = None
        try:
            here(offered)
        except BaseException as e:
            error = e
        for part in offered:
            try:
                part.wait()
            except BaseException as e:
                error = error or e
        if error is not None:
            raise error

    def close(self) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for t in self._threads:
            t.join()


_local = threading.local()
_pool: _Pool | None = None
_restore_blas: Callable[[], None] | None = None  # while BLAS is held to one thread: gives back its count


def get_num_threads() -> int:
    """The number of threads the ops split their work over (1: no splitting)."""
    return 1 if _pool is None else _pool.size


def set_num_threads(n: int) -> None:
    """Split large ops over ``n`` threads (the caller plus n - 1 workers); 1 stops the workers.

    With n > 1, NumPy's BLAS is held to one thread until ``set_num_threads(1)``
    restores its previous count (:func:`nptransformer.blas_control.limit`:
    threadpoolctl if installed, else the BLAS's own functions for OpenBLAS
    and MKL). A BLAS that cannot be held raises ImportError.
    """
    global _pool, _restore_blas
    _checks.check_int_at_least("n", n, 1)
    if n == get_num_threads():
        return
    if n > 1 and _restore_blas is None:
        _restore_blas = blas_control.limit(1)
        if _restore_blas is None:
            raise ImportError("set_num_threads(n > 1) must hold BLAS to one thread, and this process's BLAS is "
                              'neither OpenBLAS nor MKL: pip install "nptransformer[threads]" (threadpoolctl)')
    if _pool is not None:
        _pool.close()
        _pool = None
    if n > 1:
        _pool = _Pool(n)
    elif _restore_blas is not None:
        _restore_blas()
        _restore_blas = None


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``set_num_threads(n)`` inside the block, the previous count after it."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def slabs(length: int, elements: int, min_elements: int = MIN_ELEMENTS) -> list[tuple[int, int]]:
    """How to cut ``length`` rows holding ``elements`` elements in all: [(start, stop), ...], one per thread.

    A single slab (0, length) when the pool is off, the work is below
    ``min_elements``, or there are fewer rows than threads.
    """
    n = max(1, min(get_num_threads(), length, elements // max(min_elements, 1)))
    bounds = [length * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def balanced(sizes: Sequence[int], min_elements: int = MIN_ELEMENTS) -> list[tuple[int, int]]:
    """Cut a list of items of the given sizes into contiguous runs of about equal total size, one per thread.

    [(start, stop), ...] over item indices, as :func:`slabs` gives; one run
    when the pool is off or the total is below ``min_elements``.
    """
    total = sum(sizes)
    n = max(1, min(get_num_threads(), len(sizes), total // max(min_elements, 1)))
    cuts, acc, k = [0], 0, 1
    for i, size in enumerate(sizes[:-1]):
        acc += size
        if k < n and acc >= total * k / n:  # cut after the item that crosses the next k/n of the total
            cuts.append(i + 1)
            k += 1
    cuts.append(len(sizes))
    return list(zip(cuts[:-1], cuts[1:]))


def run(fn: Callable[..., Any], parts: Sequence[tuple]) -> None:
    """``fn(*part)`` for each part of ``parts`` (a slab ``(start, stop)`` from :func:`slabs`, or any
    arguments), in parallel when there are several."""
    if len(parts) == 1 or _pool is None or getattr(_local, "in_worker", False):
        for part in parts:
            fn(*part)
    else:
        _pool.run(fn, parts)


def pipeline(produce: Callable[..., Any], consume: Callable[..., Any], parts: Sequence[tuple]) -> None:
    """``produce(*part)`` then ``consume(*part)`` for each part (a slab ``(start, stop)``, or any arguments)
    of ``parts``, the two overlapped.

    Why: a product (BLAS, one long call without the interpreter lock) and an
    elementwise pass over its result (many short NumPy calls, each taking
    the lock back) share two cores badly when both threads run elementwise
    passes, and well when one multiplies while the other runs the passes.
    The workers produce the slabs in order; this thread consumes them in
    order, and while the slab it needs next is still being produced it
    produces later slabs itself. Each slab is produced by the same code
    whichever thread runs it, so results are the same bits on every run. One
    thread, one slab, or a call from a worker: produce and consume each slab
    in turn.
    """
    if len(parts) == 1 or _pool is None or getattr(_local, "in_worker", False):
        for part in parts:
            produce(*part)
            consume(*part)
    else:
        _pool.pipeline(produce, consume, parts)


def gather(fn: Callable[[int, int], Any], parts: Sequence[tuple[int, int]]) -> list:
    """``[fn(start, stop) for each slab]``, computed like :func:`run`, returned in slab order.

    Partial results (a weight gradient's per-slab products) are then summed
    in that fixed order, so a result is bit-identical from run to run
    whichever thread finished first.
    """
    results: list = [None] * len(parts)
    index = {part: i for i, part in enumerate(parts)}

    def one(start: int, stop: int) -> None:
        results[index[(start, stop)]] = fn(start, stop)

    run(one, parts)
    return results
