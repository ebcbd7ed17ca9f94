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

import numpy as np

from .. import parallel
from .. import backend
from ..backend import backend_of, get_array_module

#: Elements per block of the widest input: 64 Ki float32 = 256 KiB a temporary, so the
#: half-dozen temporaries of a GELU backward fit a 1-2 MiB L2 cache with room to spare.
BLOCK_ELEMENTS = 1 << 16
#: Arrays of at most this many elements (4 MiB of float32) are left whole: their temporaries
#: stay in the last-level cache anyway, and splitting only adds calls (measured on layer norm).
WHOLE_ELEMENTS = 1 << 20


def rowwise(fn: Callable[..., Any], *arrays: Any, width: int = 0) -> Any:
    """``fn(*arrays)``, computed on blocks of leading-axis rows and stitched back together.

    Every array in ``arrays`` must have the same leading length R; ``fn``
    must return an array (or a tuple of arrays) whose leading length is that
    of its inputs and whose row r depends only on row r of the inputs.
    Arguments that broadcast (a (C,) weight) belong in ``fn``'s closure.
    With :func:`nptransformer.set_num_threads` above 1, the rows are first cut
    into one slab per thread and the slabs computed at once. ``width``: the
    elements per row of fn's widest output when it is wider than the inputs
    (a product that widens the rows); blocks are sized by the widest rows.
    """
    R = arrays[0].shape[0]
    row_elements = max([math.prod(a.shape[1:]) for a in arrays] + [width]) or 1
    name = backend_of(arrays[0])
    parts = parallel.slabs(R, R * row_elements) if name == "numpy" else [(0, R)]
    slab_elements = -(-R // len(parts)) * row_elements
    rows = R if slab_elements <= WHOLE_ELEMENTS else max(1, BLOCK_ELEMENTS // row_elements)
    if name == "cupy" or (len(parts) == 1 and rows >= R):
        return fn(*arrays)
    first = fn(*(a[:1, ...] for a in arrays))  # the first row sizes the outputs
    tuple_out = isinstance(first, tuple)
    outs = tuple(get_array_module(p).empty((R,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
                 for p in (first if tuple_out else (first,)))
    for out, p in zip(outs, first if tuple_out else (first,)):
        out[:1, ...] = p

    def compute(start: int, stop: int) -> None:
        for lo in range(max(start, 1), stop, rows):
            hi = min(lo + rows, stop)
            block = fn(*(a[lo:hi, ...] for a in arrays))
            for out, p in zip(outs, block if tuple_out else (block,)):
                out[lo:hi, ...] = p

    parallel.run(compute, parts)
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


def row_sums(x: Any) -> Any:
    """Sums over the last axis, kept as a column: (..., n) -> (..., 1).

    With the pool running (BLAS on one thread) they are computed as one
    matrix-vector product ``x @ ones(n)``: NumPy's ``sum(x, axis=-1)`` pays
    a loop setup per row, and on a freshly computed (2048, 256) float32
    block the product took 0.03 ms against 0.10 ms. Without the pool NumPy's
    sum is used: a multithreaded BLAS hands half of the fresh rows to the
    other core, out of whose cache they must first travel (0.18 ms).
    """
    xp = get_array_module(x)
    if not _serial_blas(x):
        return xp.sum(x, axis=-1, keepdims=True)
    return xp.expand_dims(x @ backend.full((x.shape[-1],), 1.0, like=x), axis=-1)


def column_sums(x: Any) -> Any:
    """Sums over every axis but the last: (..., n) -> (n,); ``ones(N) @ x`` when BLAS is serial (see row_sums).

    This is how a parameter shared by every row collects its gradient (a
    bias, a norm's gain).
    """
    rows = get_array_module(x).reshape(x, (-1, x.shape[-1]))
    if not _serial_blas(x):
        return get_array_module(x).sum(rows, axis=0)
    return backend.full((rows.shape[0],), 1.0, like=x) @ rows


def _serial_blas(x: Any) -> bool:
    """True when x is a NumPy array and the pool holds BLAS to one thread."""
    return parallel.get_num_threads() > 1 and backend_of(x) == "numpy"


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
    The result is the same product, row chunk by row chunk. With
    :func:`nptransformer.set_num_threads` above 1 the stack's first axis is
    cut into one slab per thread instead, each slab a run of whole products.
    """
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if backend_of(a) == "cupy" or a.ndim < 3:
        return a @ b  # a GPU batches small products itself
    rows = _divisor_at_most(M, SERIAL_PRODUCT // max(K * N, 1))
    # With the pool running, BLAS is held to one thread, so whole products are already serial.
    chunked = not (rows == M or rows < 8 or M * K * N >= _LARGE_PRODUCT or parallel.get_num_threads() > 1)
    lead = tuple(np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2])))
    split_b = b.ndim == a.ndim and b.shape[0] == a.shape[0]
    parts = parallel.slabs(a.shape[0], math.prod(lead) * M * N) if backend_of(a) == "numpy" and a.shape[0] == lead[0] else [(0, 1)]
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


def matmul(a: Any, b: Any, bias: Any = None) -> Any:
    """``a @ b (+ bias)`` for matrices a (M, K), b (K, N) and bias (N,) or None -> (M, N).

    One BLAS GEMM; with :func:`nptransformer.set_num_threads` above 1, one per
    thread (BLAS itself then runs on one thread each), cut along the longest
    of the three sides so that each thread reads its own part of the larger
    operands: a's rows (M), b's columns (N), or the inner axis K, where each
    thread multiplies a slab of a's columns by the same slab of b's rows and
    the partial products are summed. K is the long side of a weight
    gradient, (C_out, B*T) @ (B*T, C_in); measured on those, the K split ran
    at 440 GFLOP/s where a row or column split ran at 350-400.
    """
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    along = max((M, "rows"), (N, "columns"), (K, "inner"))[1]
    parts = parallel.slabs(max(M, N, K), M * N) if backend_of(a) == "numpy" else [(0, 1)]
    if len(parts) == 1:
        out = a @ b
        if bias is not None:
            out += bias
        return out
    if along == "inner":
        partial: dict[int, Any] = {}  # slab start -> that slab's product
        parallel.run(lambda lo, hi: partial.update({lo: a[:, lo:hi] @ b[lo:hi]}), parts)
        out = partial.pop(0)
        for p in partial.values():
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


def _divisor_at_most(m: int, limit: int) -> int:
    """The largest divisor of m that is at most limit (m itself when limit >= m)."""
    for d in range(min(m, max(limit, 1)), 0, -1):
        if m % d == 0:
            return d
    return 1
