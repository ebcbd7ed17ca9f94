"""A bounded load test against a server on this machine (127.0.0.1 only), with aiohttp's HTTP client.

- :class:`ServerThread`: the application on 127.0.0.1 and a free port, in a
  background thread with its own event loop; ``stop()`` shuts it down as
  SIGTERM would (in-flight requests finish); ``batcher`` and ``cache`` hold the counters.
- :func:`send_all`: POST every payload with ``concurrency`` requests in
  flight; returns statuses, bodies and latencies, in payload order. It is
  bounded: a fixed list of requests, a per-request timeout, and a deadline
  after which no new request starts.
- :func:`zipf_queries`: a query stream whose k-th most popular item is asked
  with probability proportional to 1 / k^s (caches earn their keep on such streams).
- :func:`summarize`: throughput and p50/p99 latency.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np

from .app import _aiohttp, app_keys, create_app

LOOPBACK = "127.0.0.1"


class ServerThread:
    """``with ServerThread(service, max_batch=...) as server: server.url``; ``options`` go to :func:`create_app`."""

    def __init__(self, service: Any, **options: Any):
        self.app = create_app(service, **options)
        self.batcher, self.cache = (self.app[app_keys()[k]] for k in ("batcher", "cache"))
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nptransformer-server", daemon=True)
        self.url = ""
        self._runner: Any = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        web = _aiohttp()
        self._runner = web.AppRunner(self.app, shutdown_timeout=60.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)  # port 0: the OS picks a free one
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://{LOOPBACK}:{port}"

    def start(self) -> ServerThread:
        """Start serving; returns once the port is open."""
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the server did not start within 60 s")
        return self

    def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish queued and in-flight requests, end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=120)
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=60)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def send_all(url: str, payloads: list[dict], concurrency: int, timeout_s: float = 60.0,
             deadline_s: float = 120.0) -> dict:
    """POST each payload to ``url`` (JSON) with ``concurrency`` workers -> ``status``, ``body``,
    ``latency_s`` (lists in payload order; None for a request never sent), ``seconds`` (wall time).

    Only loopback addresses are accepted. A request is sent only before
    ``deadline_s``; each may take ``timeout_s``.
    """
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host not in (LOOPBACK, "localhost", "::1"):
        raise ValueError(f"url must point at this machine (127.0.0.1, localhost or ::1), got {url!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    return asyncio.run(_send_all(url, payloads, concurrency, timeout_s, deadline_s))


async def _send_all(url: str, payloads: list[dict], concurrency: int, timeout_s: float, deadline_s: float) -> dict:
    import aiohttp

    n = len(payloads)
    status: list[Any] = [None] * n
    body: list[Any] = [None] * n
    latency: list[Any] = [None] * n
    next_index = iter(range(n))
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def worker() -> None:
            for i in next_index:
                if time.perf_counter() - start > deadline_s:
                    return
                t0 = time.perf_counter()
                async with session.post(url, json=payloads[i]) as response:
                    body[i] = await response.json()
                    status[i] = response.status
                latency[i] = time.perf_counter() - t0

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"status": status, "body": body, "latency_s": latency, "seconds": time.perf_counter() - start}


def zipf_queries(n_distinct: int, n: int, s: float = 1.1, seed: int = 0) -> np.ndarray:
    """``n`` indices into ``n_distinct`` items, item k (0-based) drawn with probability ~ 1 / (k + 1)^s."""
    weights = 1.0 / np.arange(1, n_distinct + 1) ** s
    return np.random.default_rng(seed).choice(n_distinct, size=n, p=weights / weights.sum())


def summarize(result: dict) -> dict:
    """``requests`` answered 200, ``busy`` (503), ``throughput`` (answered per second), ``p50_ms``, ``p99_ms``."""
    ok = [lat for st, lat in zip(result["status"], result["latency_s"]) if st == 200]
    lat = np.array(ok) * 1000.0
    return {"requests": len(ok), "busy": sum(st == 503 for st in result["status"]),
            "throughput": len(ok) / result["seconds"],
            "p50_ms": float(np.percentile(lat, 50)) if len(ok) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(ok) else float("nan")}
