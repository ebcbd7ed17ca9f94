"""Layer normalization and RMS normalization over the last axis.

>>> import numpy as np
>>> from nptransformer.functional import layer_norm_forward, layer_norm_backward
>>> y, ctx = layer_norm_forward(np.array([[1.0, 3.0]]), eps=0.0)
>>> y.tolist()
[[-1.0, 1.0]]
>>> dx, dweight, dbias = layer_norm_backward(np.ones((1, 2)), ctx)
>>> dx.tolist(), dweight, dbias  # a constant upstream gradient shifts every entry alike: no effect
([[0.0, 0.0]], None, None)

Derivations: docs/ops/normalization.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module
from ..registry import Case, register_op


def check_norm_inputs(x: Any, weight: Any, bias: Any, eps: Any) -> None:
    """The argument checks of layer norm (and, with ``bias=None``, RMS norm), shared with their kernels."""
    _checks.check_float("x", x)
    _checks.check_ndim("x", x, range(1, 33))
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            _checks.check_float(name, p)
            if tuple(p.shape) != (x.shape[-1],):
                raise ValueError(
                    f"{name} must have shape ({x.shape[-1]},) to match x's last axis (x is {tuple(x.shape)}), "
                    f"got {tuple(p.shape)}"
                )
    _checks.check_same_dtype(x=x, weight=weight, bias=bias)
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")


def layer_norm_forward(x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> tuple[Any, tuple]:
    """y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias over the last axis.

    Shapes: x (..., C), weight and bias (C,) or None -> y (..., C). The
    variance is the biased one (divide by C), as in PyTorch. Saves xhat (the
    normalised x, needed for dweight and dx alike), rstd = 1/sqrt(var + eps)
    of shape (..., 1), and weight.
    """
    check_norm_inputs(x, weight, bias, eps)
    xp = get_array_module(x)
    xc = x - xp.mean(x, axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xc * rstd
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias
    return y, (xhat, rstd, weight, bias is not None)


def layer_norm_backward(dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """Gradients of layer norm: returns (dx, dweight or None, dbias or None).

    g = dy * weight,  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))  (means over C),
    dweight = sum(dy * xhat), dbias = sum(dy) (sums over the leading axes).
    Derivation: docs/ops/normalization.md.
    """
    xhat, rstd, weight, has_bias = ctx
    xp = get_array_module(dy, xhat)
    g = dy if weight is None else dy * weight  # forward: y = xhat * weight + bias
    mean_g = xp.mean(g, axis=-1, keepdims=True)  # forward: xc = x - mean(x)
    mean_gx = xp.mean(g * xhat, axis=-1, keepdims=True)  # forward: rstd = 1/sqrt(var(x) + eps)
    dx = rstd * (g - mean_g - xhat * mean_gx)  # forward: xhat = xc * rstd, each term undoing one step
    dweight = None if weight is None else _sum_rows(dy * xhat)  # forward: y = xhat * weight, in every row
    dbias = _sum_rows(dy) if has_bias else None  # forward: y = ... + bias, in every row
    return dx, dweight, dbias


def rms_norm_forward(x: Any, weight: Any = None, eps: float | None = None) -> tuple[Any, tuple]:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis (no centring, no bias).

    Shapes: x (..., C), weight (C,) or None -> y (..., C). ``eps=None`` means
    the machine epsilon of x's dtype, as ``torch.nn.functional.rms_norm``.
    Saves xhat = x * rstd, rstd (..., 1) and weight.
    """
    check_norm_inputs(x, weight, None, eps)
    xp = get_array_module(x)
    if eps is None:
        eps = float(xp.finfo(x.dtype).eps)
    rstd = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * rstd
    y = xhat if weight is None else xhat * weight
    return y, (xhat, rstd, weight)


def rms_norm_backward(dy: Any, ctx: tuple) -> tuple[Any, Any]:
    """Gradients of RMS norm: returns (dx, dweight or None).

    g = dy * weight,  dx = rstd * (g - xhat * mean(g * xhat)),  dweight = sum(dy * xhat).
    Derivation: docs/ops/normalization.md.
    """
    xhat, rstd, weight = ctx
    xp = get_array_module(dy, xhat)
    g = dy if weight is None else dy * weight  # forward: y = xhat * weight
    mean_gx = xp.mean(g * xhat, axis=-1, keepdims=True)  # forward: rstd = 1/sqrt(mean(x^2) + eps)
    dx = rstd * (g - xhat * mean_gx)  # forward: xhat = x * rstd
    dweight = None if weight is None else _sum_rows(dy * xhat)  # forward: y = xhat * weight, in every row
    return dx, dweight


def _sum_rows(a: Any) -> Any:
    """Sum over every axis but the last: (..., C) -> (C,), how a parameter shared by all rows collects its gradient."""
    xp = get_array_module(a)
    return xp.sum(xp.reshape(a, (-1, a.shape[-1])), axis=0)


def _layer_norm_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 5)), rng.normal(size=5), rng.normal(size=5)))


def _rms_norm_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 5)), rng.normal(size=5)))


def _norm_cases(t: Any, *, with_bias: bool) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        # With C = 2 (layer norm) or C = 1 (RMS norm) the output is +-1 up to O(eps), the gradient
        # is O(eps) and a relative error against it measures rounding noise; RMS norm at C = 2 is
        # still close (4.4e-6 seen in 300 examples): both start at C = 3.
        c = draw(t.sides(3, 6))
        # |x| >= 0.3 keeps rows away from all-zero (RMS norm's singular point, eps ~ 1e-16)
        x = draw(t.float_arrays(draw(t.shapes(0, 2, max_side=3)) + (c,), min_magnitude=0.3))
        optional = t.st.one_of(t.st.none(), t.float_arrays((c,)))
        params = (draw(optional), draw(optional)) if with_bias else (draw(optional),)
        eps = draw(t.st.sampled_from([1e-5, 0.1] if with_bias else [None, 1e-6]))
        return Case((x, *params), {"eps": eps})

    return cases()


register_op(
    "layer_norm",
    layer_norm_forward,
    layer_norm_backward,
    example=_layer_norm_example,
    cases=lambda t: _norm_cases(t, with_bias=True),
    differentiable=(0, 1, 2),
)
register_op(
    "rms_norm",
    rms_norm_forward,
    rms_norm_backward,
    example=_rms_norm_example,
    cases=lambda t: _norm_cases(t, with_bias=False),
    differentiable=(0, 1),
)
