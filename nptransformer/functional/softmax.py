"""Softmax and log-softmax along an axis, stable for huge logits and -inf entries.

>>> import numpy as np
>>> from nptransformer.functional import softmax_forward
>>> y, _ = softmax_forward(np.array([0.0, np.log(3.0)]))
>>> y.round(6).tolist()
[0.25, 0.75]

Derivation of the backward: docs/ops/softmax.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module
from ._blocks import over_last_axis, row_sums
from ..registry import Case, register_op


def _shifted(x: Any, axis: int) -> Any:
    """x - max(x): exp never overflows. A row that is all -inf is shifted by 0, not by -inf
    (which would give nan); such a row stays all -inf."""
    xp = get_array_module(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0.0)
    return x - m


def _check_axis(x: Any, axis: int) -> None:
    _checks.check_float("x", x)
    if not isinstance(axis, int) or not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, got {axis!r}")


def _along(fn: Any, axis: int, *arrays: Any) -> Any:
    """fn(*arrays, axis): over blocks of rows when axis is the last one (the common case, see _blocks)."""
    if axis in (-1, arrays[0].ndim - 1):
        return over_last_axis(lambda *rows: fn(*rows, -1), *arrays)
    return fn(*arrays, axis)


def _sums(x: Any, axis: int) -> Any:
    """Sums along ``axis``, keepdims; the last axis (every call from _along) as a matrix-vector product."""
    if axis in (-1, x.ndim - 1):
        return row_sums(x)
    return get_array_module(x).sum(x, axis=axis, keepdims=True)


def normalized_exp(x: Any, axis: int) -> tuple[Any, Any, Any]:
    """(z, log_s, p) for the rows of x along ``axis``: z = x - max(x), s = sum(exp(z)),
    log_s = log(s) (keepdims), p = exp(z) / s = softmax(x). A row of -inf gives p = 0 and log_s = 0.

    Shared by softmax, log-softmax and cross-entropy, which need different parts.
    """
    xp = get_array_module(x)
    z = _shifted(x, axis)
    p = xp.exp(z)
    s = _sums(p, axis)
    s = xp.where(s > 0, s, 1.0)
    p /= s
    return z, xp.log(s), p


def softmax_forward(x: Any, axis: int = -1) -> tuple[Any, tuple]:
    """y = exp(x) / sum(exp(x)) along ``axis``. Shapes: x (...) -> y (same).

    A row whose entries are all -inf gives zeros (not nan). Saves y only:
    the backward needs nothing else.
    """
    _check_axis(x, axis)
    y = _along(lambda rows, ax: normalized_exp(rows, ax)[2], axis, x)
    return y, (y, axis)


def _softmax_grad(dy: Any, y: Any, axis: int) -> Any:
    g = dy * y
    g -= y * _sums(g, axis)  # y dy - y sum(dy y) = y (dy - sum(dy y))
    return g


def softmax_backward(dy: Any, ctx: tuple) -> Any:
    """dx = y * (dy - sum(dy * y)) along the axis: the Jacobian diag(y) - y y^T applied
    to dy without forming it. Derivation: docs/ops/softmax.md."""
    y, axis = ctx
    return _along(_softmax_grad, axis, dy, y)


def _log_softmax(x: Any, axis: int) -> tuple[Any, Any]:
    z, log_s, p = normalized_exp(x, axis)
    z -= log_s
    return z, p


def log_softmax_forward(x: Any, axis: int = -1) -> tuple[Any, tuple]:
    """y = x - log(sum(exp(x))) along ``axis``. Shapes: x (...) -> y (same).

    Computed as (x - m) - log(sum(exp(x - m))), m = max(x): exact for logits
    of magnitude 1e4. Entries that are -inf stay -inf. Saves softmax(x) =
    exp(y), which is all the backward needs.
    """
    _check_axis(x, axis)
    y, p = _along(_log_softmax, axis, x)
    return y, (p, axis)


def log_softmax_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy - softmax(x) * sum(dy) along the axis. Derivation: docs/ops/softmax.md."""
    p, axis = ctx
    return _along(lambda g, q, ax: g - q * _sums(g, ax), axis, dy, p)


def _example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 5)),), {"axis": -1})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        x = draw(t.float_arrays(t.shapes(1, 3), low=-4.0, high=4.0))
        axis = draw(t.st.integers(-x.ndim, x.ndim - 1))
        return Case((x,), {"axis": axis})

    return cases()


register_op("softmax", softmax_forward, softmax_backward, example=_example, cases=_cases)
register_op("log_softmax", log_softmax_forward, log_softmax_backward, example=_example, cases=_cases)
