"""``softmax.rows`` and ``log_softmax.rows``: softmax over the last axis in cache-sized row blocks.

The reference evaluates each operator over the whole array. These kernels
cut the rows into blocks (:func:`._rows.over_last_axis`; with
:func:`nptransformer.set_num_threads` above 1, first one slab of rows per
thread), normalise in place, and take the row sums as :func:`._rows.row_sums`
does. The softmax backward y (dy - sum(dy y)) takes the sum as one
``vecdot`` per row (:func:`._rows.row_dots`) and forms one temporary. Along
another axis they compute the same, whole.

>>> import numpy as np
>>> y, ctx = SoftmaxRows().forward(np.zeros((2, 4)))
>>> y[0].tolist(), SoftmaxRows().backward(np.ones((2, 4)), ctx)[0].tolist()
([0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..backend import backend_of, get_array_module
from ..functional.softmax import check_softmax_inputs
from ._rows import RowKernel, call_into, empty_outputs, into, over_last_axis, row_dots, row_sums
from .dispatch import register_kernel


def _shift_by_max(x: Any, axis: int, out: Any = None) -> Any:
    """z = x - max(x) along ``axis`` as :func:`nptransformer.functional.softmax.shift_by_max`, into ``out``.

    On NumPy the maximum is ``fmax.reduce``: 0.57 ms against 0.79 for ``max`` over (8192, 128) float32
    rows (attention's scores). fmax skips a NaN where max returns it; the NaN still reaches its row's
    sum and every probability of the row, as with max.
    """
    xp = get_array_module(x)
    if isinstance(x, np.ndarray):
        m = np.fmax.reduce(x, axis=axis, keepdims=True)
    else:
        m = xp.max(x, axis=axis, keepdims=True)
    return into(xp.subtract, x, xp.where(xp.isfinite(m), m, 0.0), out=out)


def normalized_exp(x: Any, axis: int) -> tuple[Any, Any, Any]:
    """(z, log_s, p) for the rows of x along ``axis``: z = x - max(x), s = sum(exp(z)),
    log_s = log(s) (keepdims), p = exp(z) / s = softmax(x). A row of -inf gives p = 0 and log_s = 0.

    Shared by log-softmax and cross-entropy, which need z and log_s as well as p.
    """
    xp = get_array_module(x)
    z = _shift_by_max(x, axis)
    p = xp.exp(z)
    s = _sums(p, axis)
    s = xp.where(s == 0, 1.0, s)  # a row of -inf: p = 0; a NaN sum stays NaN
    p /= s
    return z, xp.log(s), p


def softmax_rows(x: Any, axis: int, out: Any = None) -> Any:
    """softmax(x) along ``axis``: x (...) -> p (same shape), written into ``out`` when given.

    One array: x - max(x), then its exp and the division in place (on array_api_strict, which has no
    ``out=``, exp makes a second). The softmax kernel's block body, and the one-token decoding step's.
    """
    xp = get_array_module(x)
    p = _shift_by_max(x, axis, out)
    p = into(xp.exp, p, out=None if backend_of(p) == "strict" else p)
    s = _sums(p, axis)
    p /= xp.where(s == 0, 1.0, s)  # a row of -inf: p = 0, not nan; a NaN anywhere: the row is NaN
    return p


def _sums(x: Any, axis: int) -> Any:
    """Sums along ``axis``, keepdims; along the last axis as :func:`._rows.row_sums`."""
    if axis in (-1, x.ndim - 1):
        return row_sums(x)
    return get_array_module(x).sum(x, axis=axis, keepdims=True)


def _along(fn: Callable[..., Any], axis: int, settings: dict, *arrays: Any, out: Any = None) -> Any:
    """fn(*arrays, axis): over blocks of rows when axis is the last one, whole otherwise; with ``out``,
    fn(*arrays, axis, out=...) writes into it (:func:`._rows.rowwise`)."""
    if axis in (-1, arrays[0].ndim - 1):
        if out is None:
            return over_last_axis(lambda *rows: fn(*rows, -1), *arrays, settings=settings)
        return over_last_axis(lambda *rows, out=None: fn(*rows, -1, out=out), *arrays, settings=settings, out=out)
    if out is None:
        return fn(*arrays, axis)
    return call_into(lambda *whole, out=None: fn(*whole, axis, out=out), arrays, out)


def _softmax_grad(dy: Any, y: Any, axis: int) -> Any:
    if axis in (-1, y.ndim - 1):
        g = dy - row_dots(dy, y)  # dy - sum(dy y): the sum without the product array
    else:
        g = dy - get_array_module(y).sum(dy * y, axis=axis, keepdims=True)
    g *= y  # y (dy - sum(dy y))
    return g


def _log_softmax(x: Any, axis: int) -> tuple[Any, Any]:
    z, log_s, p = normalized_exp(x, axis)
    z -= log_s
    return z, p


def _applies(kernel: RowKernel, x: Any, axis: int) -> bool:
    """NumPy along the last axis (the row blocks), or CuPy along any (whole, in place)."""
    return RowKernel.applies(kernel, x) and (backend_of(x) == "cupy" or axis in (-1, x.ndim - 1))


class SoftmaxRows(RowKernel):
    """Softmax in row blocks, normalised in place; saves y, as the reference.

    Applies to NumPy arrays of at least ``reference_below`` elements along the last
    axis and to CuPy arrays (:func:`_applies`). Shapes as
    :func:`nptransformer.functional.softmax_forward`. Settings:
    :data:`._rows.ROW_SETTINGS`.
    """

    op = "softmax"
    name = "softmax.rows"

    def applies(self, x: Any, axis: int = -1) -> bool:
        return _applies(self, x, axis)

    def forward(self, x: Any, axis: int = -1) -> tuple[Any, tuple]:
        check_softmax_inputs(x, axis)
        y = _along(softmax_rows, axis, self.settings, x, out=empty_outputs(x, None)[0])
        return y, (y, axis)

    def backward(self, dy: Any, ctx: tuple) -> Any:
        y, axis = ctx
        return _along(_softmax_grad, axis, self.settings, dy, y)


class LogSoftmaxRows(RowKernel):
    """Log-softmax in row blocks; saves softmax(x), computed on the way, as the reference.

    Applies where :class:`SoftmaxRows` does. Shapes as
    :func:`nptransformer.functional.log_softmax_forward`.
    """

    op = "log_softmax"
    name = "log_softmax.rows"

    def applies(self, x: Any, axis: int = -1) -> bool:
        return _applies(self, x, axis)

    def forward(self, x: Any, axis: int = -1) -> tuple[Any, tuple]:
        check_softmax_inputs(x, axis)
        y, p = _along(_log_softmax, axis, self.settings, x)
        return y, (p, axis)

    def backward(self, dy: Any, ctx: tuple) -> Any:
        p, axis = ctx
        return _along(lambda g, q, ax: g - q * _sums(g, ax), axis, self.settings, dy, p)


register_kernel(SoftmaxRows())
register_kernel(LogSoftmaxRows())
