"""Row blocks: an expression evaluated block of rows by block of rows, the blocks shared among threads.

NumPy evaluates ``0.5 * x * (1.0 + t)`` one operator at a time over the whole
array: an expression of k operators on a (B*T, 4C) activation streams k
full-size temporaries through main memory, and each fresh temporary above
the allocator's mmap threshold is new pages the kernel must fault in and
zero. Cut into blocks of a few rows, the same expression runs out of the L2
cache and reuses the same small buffers. Results are unchanged whenever the
expression treats rows independently (elementwise ops, reductions over the
last axis), which is the only way the kernels use it.

On CuPy one kernel per operator over the whole array is what a GPU wants,
so there the expression is applied once, unsplit.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from .. import _checks, backend, parallel
from ..backend import backend_of, get_array_module
from .dispatch import Kernel

#: Elements per block of the widest input: 64 Ki float32 = 256 KiB a temporary, so the
#: half-dozen temporaries of a GELU backward fit a 1-2 MiB L2 cache with room to spare.
BLOCK_ELEMENTS = 1 << 16
#: Arrays of at most this many elements (4 MiB of float32) are left whole: their temporaries
#: stay in the last-level cache anyway, and splitting only adds calls (measured on layer norm).
WHOLE_ELEMENTS = 1 << 20
#: Elements per block when the rows are split over the pool's threads. Each NumPy operator hands the
#: GIL back and forth between the threads, and taking it back after a short operator costs about as
#: much as the operator: on two threads, a (2048, 1024) GELU with its slope took 5.1 ms in blocks of
#: 64 Ki, 4.0 in blocks of 128 Ki (one thread in blocks of 64 Ki: 4.9), a (2048, 256) layer norm
#: 0.66 ms forward against 0.94 in blocks of 64 Ki.
POOLED_BLOCK_ELEMENTS = 1 << 17

#: NumPy arrays below this many elements go to the reference: the block machinery costs more than
#: it saves there (layer norm and softmax on (R, 256) float32 rows: the kernels were 6 to 11 us slower
#: up to 8 Ki elements and even at 32 Ki; decoding one token runs a dozen such ops a layer).
REFERENCE_BELOW = 1 << 15

#: The settings of every row-blocked kernel, and the small ones its tests use.
ROW_SETTINGS = {"block_elements": BLOCK_ELEMENTS, "whole_elements": WHOLE_ELEMENTS,
                "pooled_block_elements": POOLED_BLOCK_ELEMENTS, "min_elements": parallel.MIN_ELEMENTS,
                "reference_below": REFERENCE_BELOW}
ROW_TEST_SETTINGS = {"block_elements": 8, "whole_elements": 0, "pooled_block_elements": 8, "min_elements": 1,
                     "reference_below": 0}


class RowKernel(Kernel):
    """A kernel that works through row blocks: :data:`ROW_SETTINGS`, and it applies to NumPy and CuPy
    arrays (on CuPy the rows run whole, one GPU kernel per operator) and NumPy arrays of at least
    ``reference_below`` elements; ``array_api_strict`` gets the reference. Subclasses may narrow
    :meth:`applies`."""

    defaults = ROW_SETTINGS
    test_settings = ROW_TEST_SETTINGS

    def applies(self, x: Any, *args: Any, **kwargs: Any) -> bool:
        if not _checks.is_array(x):
            return False
        name = backend_of(x)
        return name == "cupy" or (name == "numpy" and x.size >= self.settings["reference_below"])


def rowwise(fn: Callable[..., Any], *arrays: Any, settings: dict, out: Any = None) -> Any:
    """``fn(*arrays)``, computed on blocks of leading-axis rows and stitched back together.

    Every array in ``arrays`` must have the same leading length R; ``fn``
    must return an array (or a tuple of arrays) whose leading length is that
    of its inputs and whose row r depends only on row r of the inputs.
    Arguments that broadcast (a (C,) weight) belong in ``fn``'s closure.
    With :func:`nptransformer.set_num_threads` above 1, the rows are first cut
    into one slab per thread and the slabs computed at once.

    ``out``: the result's arrays (R, ...), allocated by the caller, or None.
    Given, ``fn`` is called as ``fn(*blocks, out=...)`` with the same rows
    of ``out`` (an array, or a tuple of them, as ``out`` is) and must write
    its results there: no block is copied twice, and an output may be an
    input's own memory when ``fn`` reads that input before writing it (on
    array_api_strict, whose functions take no ``out=``, ``fn`` returns its
    results and they are copied into ``out``). Split over threads, blocks
    hold ``pooled_block_elements`` (larger: see :data:`POOLED_BLOCK_ELEMENTS`).
    ``settings``: ``block_elements``, ``whole_elements``,
    ``pooled_block_elements``, ``min_elements`` (:data:`ROW_SETTINGS`).
    """
    R = arrays[0].shape[0]
    row_elements = max(math.prod(a.shape[1:]) for a in arrays) or 1
    name = backend_of(arrays[0])
    parts = parallel.slabs(R, R * row_elements, settings["min_elements"]) if name == "numpy" else [(0, R)]
    if len(parts) > 1:
        rows = max(1, settings["pooled_block_elements"] // row_elements)
    elif R * row_elements <= settings["whole_elements"]:
        rows = R
    else:
        rows = max(1, settings["block_elements"] // row_elements)
    if out is not None and name == "strict":
        return call_into(lambda *a: rowwise(fn, *a, settings=settings), arrays, out)
    if name == "cupy" or (len(parts) == 1 and rows >= R):
        return call_into(fn, arrays, out)
    tuple_out = isinstance(out, tuple)
    if out is None:
        first = fn(*(a[:1, ...] for a in arrays))  # the first row sizes the outputs
        tuple_out = isinstance(first, tuple)
        outs = tuple(get_array_module(p).empty((R,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
                     for p in (first if tuple_out else (first,)))
        for o, p in zip(outs, first if tuple_out else (first,)):
            o[:1, ...] = p
        begin = 1
    else:
        outs, begin = (out if tuple_out else (out,)), 0

    def compute(start: int, stop: int) -> None:
        for lo in range(max(start, begin), stop, rows):
            hi = min(lo + rows, stop)
            blocks = tuple(a[lo:hi, ...] for a in arrays)
            if out is not None:
                fn(*blocks, out=tuple(o[lo:hi, ...] for o in outs) if tuple_out else outs[0][lo:hi, ...])
                continue
            block = fn(*blocks)
            for o, p in zip(outs, block if tuple_out else (block,)):
                o[lo:hi, ...] = p

    parallel.run(compute, parts)
    return outs if tuple_out else outs[0]


def call_into(fn: Callable[..., Any], arrays: tuple, out: Any) -> Any:
    """``fn(*arrays)``, into ``out`` when given: by ``out=``, or on array_api_strict (whose functions take
    no ``out=``) by copying fn's results there."""
    if out is None:
        return fn(*arrays)
    if backend_of(arrays[0]) != "strict":
        return fn(*arrays, out=out)
    results = fn(*arrays)
    for o, r in zip(out if isinstance(out, tuple) else (out,), results if isinstance(out, tuple) else (results,)):
        o[...] = r
    return out


def over_last_axis(fn: Callable[..., Any], *arrays: Any, settings: dict, out: Any = None) -> Any:
    """:func:`rowwise` for row-wise ops on arrays (..., n): the leading axes are flattened into rows.

    Every array has the same leading shape (...); ``fn`` gets 2-D blocks (r, n)
    and returns (r, m) arrays, reshaped back to (..., m). ``out``: C-contiguous
    (..., m) arrays for ``fn`` to write into, as :func:`rowwise` takes them.
    """
    if arrays[0].ndim < 2 or any(a.shape[-1] == 0 for a in arrays):
        return call_into(fn, arrays, out)
    xp = get_array_module(*arrays)
    lead = tuple(arrays[0].shape[:-1])
    rows = [xp.reshape(a, (-1, a.shape[-1])) for a in arrays]
    if out is not None:
        flat = tuple(xp.reshape(o, (-1, o.shape[-1])) for o in (out if isinstance(out, tuple) else (out,)))
        rowwise(fn, *rows, settings=settings, out=flat if isinstance(out, tuple) else flat[0])
        return out
    out = rowwise(fn, *rows, settings=settings)
    parts = out if isinstance(out, tuple) else (out,)
    parts = tuple(xp.reshape(p, lead + (p.shape[-1],)) for p in parts)
    return parts if isinstance(out, tuple) else parts[0]


def empty_outputs(x: Any, *widths: int | None) -> tuple:
    """Empty C-contiguous arrays for a row op's results: x's leading shape and dtype, last axis of each
    ``width`` (None: x's own). :func:`over_last_axis` writes into them through reshaped views."""
    xp = get_array_module(x)
    lead = tuple(x.shape[:-1])
    return tuple(xp.empty(lead + (x.shape[-1] if w is None else w,), dtype=x.dtype, device=x.device)
                 for w in widths)


def into(op: Callable[..., Any], *args: Any, out: Any) -> Any:
    """``op(*args)`` written into ``out``, or a fresh array when out is None: how a block body writes
    its results where :func:`rowwise` asks (array_api_strict's functions take no ``out=``, and
    :func:`rowwise` never passes it one)."""
    return op(*args) if out is None else op(*args, out=out)


def row_sums(x: Any) -> Any:
    """Sums over the last axis, kept as a column: (..., n) -> (..., 1).

    NumPy's ``sum(x, axis=-1)`` pays a loop setup per row. With the pool
    running (BLAS on one thread) the sums are one matrix-vector product
    ``x @ ones(n)``: on a freshly computed (2048, 256) float32 block 0.03 ms
    against 0.10 ms. Otherwise NumPy's ``vecdot(x, ones)``, a dot product per
    row on this thread (a multithreaded BLAS would hand half of the fresh
    rows to the other core, out of whose cache they must first travel):
    0.02 ms against 0.07 for ``sum`` on (799, 384).
    """
    xp = get_array_module(x)
    if backend_of(x) != "numpy":
        return xp.sum(x, axis=-1, keepdims=True)
    ones = _ones(x.shape[-1], x.dtype)
    if _serial_blas(x):
        return xp.expand_dims(x @ ones, axis=-1)
    return np.vecdot(x, ones)[..., None]


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: Any) -> np.ndarray:
    """A read-only NumPy vector of n ones: row sums take one per call, and a decoding step makes dozens."""
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def row_dots(a: Any, b: Any) -> Any:
    """``row_sums(a * b)`` without the product array: (..., n), (..., n) -> (..., 1).

    On NumPy one ``vecdot`` (the variance's sum of squares on (799, 384):
    0.025 ms against 0.15 for squaring and summing).
    """
    if backend_of(a) == "numpy":
        return np.vecdot(a, b)[..., None]
    return row_sums(a * b)


def column_sums(x: Any) -> Any:
    """Sums over every axis but the last: (..., n) -> (n,); ``ones(N) @ x`` when BLAS is serial (see row_sums).

    This is how a parameter shared by every row collects its gradient (a
    bias, a norm's gain).
    """
    rows = get_array_module(x).reshape(x, (-1, x.shape[-1]))
    if not _serial_blas(x):
        return get_array_module(x).sum(rows, axis=0)
    return backend.full((rows.shape[0],), 1.0, like=x) @ rows


def column_dots(a: Any, b: Any) -> Any:
    """``column_sums(a * b)`` without the product array: (..., n), (..., n) -> (n,).

    A norm's gain collects its gradient this way (the sum over rows of dy * xhat). On NumPy one
    ``einsum``: 0.15 ms against 0.30 for the product and its column sums on (2048, 256) float32.
    """
    if backend_of(a) == "numpy":
        return np.einsum("ij,ij->j", np.reshape(a, (-1, a.shape[-1])), np.reshape(b, (-1, b.shape[-1])))
    return column_sums(a * b)


def _serial_blas(x: Any) -> bool:
    """True when x is a NumPy array and the pool holds BLAS to one thread."""
    return parallel.get_num_threads() > 1 and backend_of(x) == "numpy"
