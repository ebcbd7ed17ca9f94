"""Dynamic batching: requests that arrive close together share one forward pass.

A :class:`DynamicBatcher` owns a bounded queue and one worker task. The
worker waits for a first item, then keeps collecting until ``max_batch``
items are gathered or ``max_wait_ms`` has passed since the first one, and
hands the batch to ``compute`` (run in a single worker thread, so the event
loop keeps accepting connections while the model works). Under light load a
request waits at most ``max_wait_ms``; under heavy load batches fill up and
the model's per-call overhead is shared. A full queue refuses new items
(:class:`Busy`), so that a burst is answered "busy" at once instead of
growing memory and latency without limit. :meth:`DynamicBatcher.close`
refuses new items, lets the worker finish every queued one, then stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any


class Busy(Exception):
    """The queue is full (or the batcher is closing): the request is refused, not queued."""


class DynamicBatcher:
    """``await batcher.submit(item)`` -> ``compute([..., item, ...])``'s result for that item.

    ``compute(items) -> results`` takes a list of at most ``max_batch``
    items and returns one result per item, in order. ``max_queue``: items
    waiting (not counting the batch being computed) before :class:`Busy`.
    Counters: ``batches``, ``items``, ``largest_batch``, ``refused`` (:class:`Busy` raised).
    """

    def __init__(self, compute: Callable[[list], Sequence], max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(max_wait_ms, (int, float)) or isinstance(max_wait_ms, bool) or not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        self.compute, self.max_batch, self.max_wait = compute, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batches = self.items = self.largest_batch = self.refused = 0
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nptransformer-batch")

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and wait for its result; raises :class:`Busy` at once when the queue is full."""
        if self._queue is None or self._closing:
            self.refused += 1
            raise Busy("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            self.refused += 1
            raise Busy(f"{self.max_queue} requests are already waiting") from None
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:  # close(): everything queued before it has been served
                return
            batch, stop = [first], False
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait() if loop.time() >= deadline else \
                        await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._serve(loop, batch)
            if stop:
                return

    async def _serve(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        items = [item for item, _ in batch]
        self.batches, self.items = self.batches + 1, self.items + len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        try:
            results = await loop.run_in_executor(self._pool, self.compute, items)
            if len(results) != len(items):
                raise RuntimeError(f"compute returned {len(results)} results for {len(items)} items")
        except Exception as error:  # every waiting request learns of the failure, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():  # a client that went away cancelled its future
                future.set_result(result)

    async def close(self) -> None:
        """Refuse new items, finish every queued one, stop the worker and its thread."""
        if self._closing or self._queue is None:
            return
        self._closing = True
        await self._queue.put(None)  # after the queued items: the worker stops once it reaches it
        await self._worker
        self._pool.shutdown(wait=True)
