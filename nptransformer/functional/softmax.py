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
from ..registry import Case, register_op


def check_softmax_inputs(x: Any, axis: int) -> None:
    """The argument checks of softmax and log-softmax, shared with their kernels."""
    _checks.check_float("x", x)
    if not isinstance(axis, int) or not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, got {axis!r}")


def shift_by_max(x: Any, axis: int) -> Any:
    """z = x - max(x) along ``axis``: every exponent is <= 0, so exp(z) never overflows.

    A row that is all -inf is shifted by 0, not by -inf (which would give
    nan), and stays all -inf. Shapes: x (...) -> z (same).
    """
    xp = get_array_module(x)
    m = xp.max(x, axis=axis, keepdims=True)
    return x - xp.where(xp.isfinite(m), m, 0.0)


def softmax_forward(x: Any, axis: int = -1) -> tuple[Any, tuple]:
    """y = exp(x) / sum(exp(x)) along ``axis``. Shapes: x (...) -> y (same).

    A row whose entries are all -inf gives zeros (not nan). Saves y only:
    the backward needs nothing else.
    """
    check_softmax_inputs(x, axis)
    xp = get_array_module(x)
    e = xp.exp(shift_by_max(x, axis))
    s = xp.sum(e, axis=axis, keepdims=True)  # in [1, n]; 0 for a row that is all -inf
    y = e / xp.where(s == 0, 1.0, s)  # that row: 0 / 1, zeros (a NaN sum stays NaN: the row is NaN)
    return y, (y, axis)


def softmax_backward(dy: Any, ctx: tuple) -> Any:
    """dx = y * (dy - sum(dy * y)) along the axis: the Jacobian diag(y) - y y^T applied
    to dy without forming it. Derivation: docs/ops/softmax.md."""
    y, axis = ctx
    xp = get_array_module(dy, y)
    return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))  # forward: y = exp(x) / sum(exp(x))


def log_softmax_forward(x: Any, axis: int = -1) -> tuple[Any, tuple]:
    """y = x - log(sum(exp(x))) along ``axis``. Shapes: x (...) -> y (same).

    Computed as (x - m) - log(sum(exp(x - m))), m = max(x): exact for logits
    of magnitude 1e4. Entries that are -inf stay -inf. Saves softmax(x) =
    exp(y), which is all the backward needs.
    """
    check_softmax_inputs(x, axis)
    xp = get_array_module(x)
    z = shift_by_max(x, axis)
    s = xp.sum(xp.exp(z), axis=axis, keepdims=True)  # in [1, n]; 0 for a row that is all -inf
    y = z - xp.log(xp.where(s == 0, 1.0, s))  # that row: -inf - 0, stays -inf (a NaN sum: NaN)
    return y, (xp.exp(y), axis)


def log_softmax_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy - softmax(x) * sum(dy) along the axis. Derivation: docs/ops/softmax.md."""
    p, axis = ctx
    xp = get_array_module(dy, p)
    return dy - p * xp.sum(dy, axis=axis, keepdims=True)  # forward: y = x - log(sum(exp(x)))


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
