"""Measurement helpers shared by the precision and compression examples: bytes, peak memory, time."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, Callable


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes NumPy allocated (tracemalloc) while ``fn()`` ran, above what was allocated before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def median_time(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall seconds of ``repeat`` calls (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as held in memory."""
    return sum(int(v.nbytes) for v in model.state_dict().values() if v is not None)
