"""Fake quantization: quantize-dequantize in the forward, the straight-through estimator in the backward.

>>> import numpy as np
>>> from nptransformer.functional import fake_quantize_forward, fake_quantize_backward
>>> y, ctx = fake_quantize_forward(np.array([0.26, -0.74, 3.0]), np.array(0.5), qmin=-2, qmax=2)
>>> y.tolist()  # round to multiples of 0.5, clipped to [-1, 1]
[0.5, -0.5, 1.0]
>>> fake_quantize_backward(np.ones(3), ctx).tolist()  # passed straight through inside the range only
[1.0, 1.0, 0.0]

Derivation: docs/ops/fake_quantize.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module
from ..registry import Case, register_op


def check_fake_quantize_inputs(x: Any, scale: Any, qmin: int, qmax: int) -> None:
    """The argument checks of :func:`fake_quantize_forward`."""
    _checks.check_float("x", x)
    _checks.check_float("scale", scale)
    _checks.check_same_dtype(x=x, scale=scale)
    _checks.check_broadcastable("x", tuple(x.shape), "scale", tuple(scale.shape))
    for name, q in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(q, bool) or not isinstance(q, int):
            raise TypeError(f"{name} must be an int, got {q!r}")
    if not qmin < qmax:
        raise ValueError(f"qmin must be < qmax, got qmin={qmin}, qmax={qmax}")
    xp = get_array_module(x, scale)
    if not bool(xp.all(scale > 0)):
        raise ValueError("scale must be > 0 everywhere (a quantization step), got a zero, negative or nan entry")


def fake_quantize_forward(x: Any, scale: Any, qmin: int = -127, qmax: int = 127,
                          rounding: bool = True) -> tuple[Any, tuple]:
    """y = scale * clip(round(x / scale), qmin, qmax): what an integer kernel will see, kept in float.

    Shapes: x (...), scale broadcastable to x (per tensor (), per output
    channel (C_out, 1), per token (..., 1)) -> y (shape of x). The range is
    fixed by ``scale`` (not learned). ``rounding=False`` gives the surrogate
    scale * clip(x / scale, qmin, qmax) = clip(x, scale qmin, scale qmax):
    the function whose derivative the backward returns, which is what the
    gradient check differentiates. Saves the in-range mask only.
    """
    check_fake_quantize_inputs(x, scale, qmin, qmax)
    xp = get_array_module(x, scale)
    u = x / scale
    inside = (u >= qmin) & (u <= qmax)
    k = xp.clip(xp.round(u) if rounding else u, float(qmin), float(qmax))
    return k * scale, (inside,)


def fake_quantize_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy * [qmin <= x / scale <= qmax] (straight-through: round's derivative taken as 1, clip's kept).
    Derivation: docs/ops/fake_quantize.md."""
    (inside,) = ctx
    xp = get_array_module(dy, inside)
    return xp.where(inside, dy, xp.zeros_like(dy))  # forward: y = scale * clip(round(x / scale), qmin, qmax)


def _example(rng: Any) -> Case:
    x = rng.normal(size=(3, 5)) * 2.0
    return Case((x, rng.uniform(0.05, 0.2, size=(3, 1))), {"qmin": -8, "qmax": 7, "rounding": False})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        x = draw(t.float_arrays(t.shapes(1, 3), low=-3.0, high=3.0))
        scale = draw(t.float_arrays((1,) * (x.ndim - 1) + (x.shape[-1],), low=0.05, high=0.5))
        qmax = draw(t.st.integers(1, 16))
        return Case((x, scale), {"qmin": -qmax, "qmax": qmax, "rounding": False})

    return cases()


register_op("fake_quantize", fake_quantize_forward, fake_quantize_backward, example=_example, cases=_cases)
