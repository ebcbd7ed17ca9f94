"""Two ways of handing NumPy work in the sizes it runs fastest, used inside the ops.

:func:`rowwise` (and :func:`over_last_axis`) evaluate an expression block of
rows by block of rows. NumPy evaluates ``0.5 * x * (1.0 + t)`` one operator
at a time over the whole array: an expression of k operators on a (B*T, 4C)
activation streams k full-size temporaries through main memory, and each
fresh temporary above the allocator's mmap threshold is new pages the kernel
must fault in and zero. Cut into blocks of a few rows, the same expression
runs out of the L2 cache and reuses the same small buffers. Results are
unchanged whenever the expression treats rows independently (elementwise
ops, reductions over the last axis), which is the only way the ops use it.

:func:`stacked_matmul` keeps the many small products of attention on one
BLAS thread each (its docstring says why).

On CuPy one kernel per operator over the whole array is what a GPU wants,
and cuBLAS batches small products itself, so there both apply the
expression or the product once, unsplit.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..backend import backend_of, get_array_module

#: Elements per block of the widest input: 64 Ki float32 = 256 KiB a temporary, so the
#: half-dozen temporaries of a GELU backward fit a 1-2 MiB L2 cache with room to spare.
BLOCK_ELEMENTS = 1 << 16
#: Arrays of at most this many elements (4 MiB of float32) are left whole: their temporaries
#: stay in the last-level cache anyway, and splitting only adds calls (measured on layer norm).
WHOLE_ELEMENTS = 1 << 20


def rowwise(fn: Callable[..., Any], *arrays: Any) -> Any:
    """``fn(*arrays)``, computed on blocks of leading-axis rows and stitched back together.

    Every array in ``arrays`` must have the same leading length R; ``fn``
    must return an array (or a tuple of arrays) whose leading length is that
    of its inputs and whose row r depends only on row r of the inputs.
    Arguments that broadcast (a (C,) weight) belong in ``fn``'s closure.
    """
    R = arrays[0].shape[0]
    row_elements = max(math.prod(a.shape[1:]) for a in arrays) or 1
    rows = max(1, BLOCK_ELEMENTS // row_elements)
    if rows >= R or R * row_elements <= WHOLE_ELEMENTS or backend_of(arrays[0]) == "cupy":
        return fn(*arrays)
    outs, tuple_out = None, False
    for start in range(0, R, rows):
        stop = min(start + rows, R)
        block = fn(*(a[start:stop, ...] for a in arrays))
        tuple_out = isinstance(block, tuple)
        parts = block if tuple_out else (block,)
        if outs is None:  # the first block's shapes and dtypes size the outputs
            outs = tuple(get_array_module(p).empty((R,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
                         for p in parts)
        for out, p in zip(outs, parts):
            out[start:stop, ...] = p
    return outs if tuple_out else outs[0]


def over_last_axis(fn: Callable[..., Any], *arrays: Any) -> Any:
    """:func:`rowwise` for row-wise ops on arrays (..., n): the leading axes are flattened into rows.

    Every array has the same leading shape (...); ``fn`` gets 2-D blocks (r, n)
    and returns (r, m) arrays, reshaped back to (..., m).
    """
    if arrays[0].ndim < 2 or any(a.shape[-1] == 0 for a in arrays):
        return fn(*arrays)
    xp = get_array_module(*arrays)
    lead = tuple(arrays[0].shape[:-1])
    rows = [xp.reshape(a, (-1, a.shape[-1])) for a in arrays]
    out = rowwise(fn, *rows)
    parts = out if isinstance(out, tuple) else (out,)
    parts = tuple(xp.reshape(p, lead + (p.shape[-1],)) for p in parts)
    return parts if isinstance(out, tuple) else parts[0]


#: Multiply-adds up to which OpenBLAS computes a product on one thread (65536 x its
#: GEMM_MULTITHREAD_THRESHOLD of 4); above it, every product is split across all threads.
SERIAL_PRODUCT = 1 << 18
#: Products at least this large amortise their threads' synchronisation: left whole.
_LARGE_PRODUCT = 1 << 24


def stacked_matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for stacks of small matrices, (..., M, K) @ (..., K, N) -> (..., M, N).

    Why: attention multiplies one small matrix pair per batch element and
    head, thousands a training step. A multithreaded BLAS splits each of
    them over its threads and synchronises per product, and when the cores
    are also busy with anything else every synchronisation can wait for a
    scheduler time slice: measured here, 2 ms on one thread against 2 s on
    two. Cutting each product into row chunks of at most SERIAL_PRODUCT
    multiply-adds (a reshape, no copy) keeps every product on one thread.
    The result is the same product, row chunk by row chunk.
    """
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    rows = _divisor_at_most(M, SERIAL_PRODUCT // max(K * N, 1))
    if a.ndim < 3 or rows == M or rows < 8 or M * K * N >= _LARGE_PRODUCT or backend_of(a) == "cupy":
        return a @ b  # one product, chunks too thin to multiply well, large products, or a GPU
    xp = get_array_module(a, b)
    lead = tuple(a.shape[:-2])
    chunks = xp.reshape(a, lead + (M // rows, rows, K)) @ xp.expand_dims(b, axis=-3)  # (..., M/r, r, N)
    return xp.reshape(chunks, tuple(chunks.shape[:-3]) + (M, N))


def _divisor_at_most(m: int, limit: int) -> int:
    """The largest divisor of m that is at most limit (m itself when limit >= m)."""
    for d in range(min(m, max(limit, 1)), 0, -1):
        if m % d == 0:
            return d
    return 1
