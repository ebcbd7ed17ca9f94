"""Matrix products split over the pool's threads, and attention's stacks of small products kept serial.

:func:`matmul` cuts one GEMM into a slab per thread; :func:`stacked_matmul`
runs attention's many small products on one BLAS thread each (their
docstrings say why). Partial products are summed in slab order, so a result
is bit-identical from run to run at any thread count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import parallel
from ..backend import backend_of, get_array_module

#: Multiply-adds up to which OpenBLAS computes a product on one thread (65536 x its
#: GEMM_MULTITHREAD_THRESHOLD of 4); above it, every product is split across all threads.
SERIAL_PRODUCT = 1 << 18
#: Products at least this large amortise their threads' synchronisation: left whole.
LARGE_PRODUCT = 1 << 24


def matmul(a: Any, b: Any, bias: Any = None, min_elements: int = parallel.MIN_ELEMENTS) -> Any:
    """``a @ b (+ bias)`` for matrices a (M, K), b (K, N) and bias (N,) or None -> (M, N).

    One BLAS GEMM; with :func:`nptransformer.set_num_threads` above 1, one per
    thread (BLAS itself then runs on one thread each), cut along the longest
    of the three sides so that each thread reads its own part of the larger
    operands: a's rows (M), b's columns (N), or the inner axis K, where each
    thread multiplies a slab of a's columns by the same slab of b's rows and
    the partial products are summed in slab order. K is the long side of a
    weight gradient, (C_out, B*T) @ (B*T, C_in); measured on those, the K
    split ran at 440 GFLOP/s where a row or column split ran at 350-400.
    """
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    along = max((M, "rows"), (N, "columns"), (K, "inner"))[1]
    parts = parallel.slabs(max(M, N, K), M * N, min_elements) if backend_of(a) == "numpy" else [(0, 1)]
    if len(parts) == 1:
        out = a @ b
        if bias is not None:
            out += bias
        return out
    if along == "inner":
        partial = parallel.gather(lambda lo, hi: a[:, lo:hi] @ b[lo:hi], parts)
        out = partial[0]
        for p in partial[1:]:  # slab order: the same sum whichever thread finished first
            out += p
        if bias is not None:
            out += bias
        return out
    out = np.empty((M, N), dtype=np.result_type(a.dtype, b.dtype))

    def rows(lo: int, hi: int) -> None:
        np.matmul(a[lo:hi], b, out=out[lo:hi])
        if bias is not None:
            out[lo:hi] += bias

    def columns(lo: int, hi: int) -> None:
        np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
        if bias is not None:
            out[:, lo:hi] += bias[lo:hi]

    parallel.run(rows if along == "rows" else columns, parts)
    return out


def stacked_matmul(a: Any, b: Any, serial_product: int = SERIAL_PRODUCT,
                   min_elements: int = parallel.MIN_ELEMENTS) -> Any:
    """``a @ b`` for stacks of small matrices, (..., M, K) @ (..., K, N) -> (..., M, N).

    Why: attention multiplies one small matrix pair per batch element and
    head, thousands a training step. A multithreaded BLAS splits each of
    them over its threads and synchronises per product, and when the cores
    are also busy with anything else every synchronisation can wait for a
    scheduler time slice: measured here, 2 ms on one thread against 2 s on
    two. Cutting each product into row chunks of at most ``serial_product``
    multiply-adds (a reshape, no copy) keeps every product on one thread.
    The result is the same product, row chunk by row chunk. With
    :func:`nptransformer.set_num_threads` above 1 the stack's first axis is
    cut into one slab per thread instead, each slab a run of whole products.
    """
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if backend_of(a) == "cupy" or a.ndim < 3:
        return a @ b  # a GPU batches small products itself
    rows = _divisor_at_most(M, serial_product // max(K * N, 1))
    # With the pool running, BLAS is held to one thread, so whole products are already serial.
    chunked = not (rows == M or rows < 8 or M * K * N >= LARGE_PRODUCT or parallel.get_num_threads() > 1)
    lead = tuple(np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2])))
    split_b = b.ndim == a.ndim and b.shape[0] == a.shape[0]
    numpy_stack = backend_of(a) == "numpy" and a.shape[0] == lead[0]
    parts = parallel.slabs(a.shape[0], math.prod(lead) * M * N, min_elements) if numpy_stack else [(0, 1)]
    if len(parts) > 1:
        # One product per slab into the shared output (np.matmul: slabs are only cut on NumPy).
        out = np.empty(lead + (M, N), dtype=np.result_type(a.dtype, b.dtype))
        parallel.run(lambda lo, hi: _chunked_matmul(a[lo:hi], b[lo:hi] if split_b else b, rows if chunked else M,
                                                    out[lo:hi]), parts)
        return out
    if not chunked:
        return a @ b  # one product, chunks too thin to multiply well, or large products
    return _chunked_matmul(a, b, rows)


def _chunked_matmul(a: Any, b: Any, rows: int, out: Any = None) -> Any:
    """a @ b with each (M, K) matrix of a multiplied ``rows`` rows at a time (rows divides M)."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if rows == M:
        return a @ b if out is None else np.matmul(a, b, out=out)
    xp = get_array_module(a, b)
    a4 = xp.reshape(a, tuple(a.shape[:-2]) + (M // rows, rows, K))
    b4 = xp.expand_dims(b, axis=-3)
    if out is None:
        chunks = a4 @ b4  # (..., M/r, r, N)
        return xp.reshape(chunks, tuple(chunks.shape[:-3]) + (M, N))
    np.matmul(a4, b4, out=np.reshape(out, tuple(out.shape[:-2]) + (M // rows, rows, N)))
    return out


def _divisor_at_most(m: int, limit: int) -> int:
    """The largest divisor of m that is at most limit (m itself when limit >= m)."""
    for d in range(min(m, max(limit, 1)), 0, -1):
        if m % d == 0:
            return d
    return 1
