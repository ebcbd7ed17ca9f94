"""Elementwise activations: ReLU and GELU (exact, and GPT-2's tanh approximation).

>>> import numpy as np
>>> from nptransformer.functional import gelu_forward, gelu_backward, relu_forward, relu_backward
>>> y, ctx = relu_forward(np.array([-1.0, 2.0]))
>>> y.tolist(), relu_backward(np.ones(2), ctx).tolist()
([0.0, 2.0], [0.0, 1.0])
>>> y, ctx = gelu_forward(np.array([0.0]))
>>> y.tolist(), gelu_backward(np.ones(1), ctx).tolist()  # gelu(0) = 0, gelu'(0) = 1/2
([0.0], [0.5])

Derivations: docs/ops/activations.md.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks
from ..backend import erf, get_array_module
from ..grad_mode import is_grad_enabled
from ._blocks import rowwise
from ..registry import Case, register_op

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715  # GPT-2's coefficient of x^3 inside the tanh
GELU_APPROXIMATIONS = ("none", "tanh")


def relu_forward(x: Any) -> tuple[Any, tuple]:
    """y = max(x, 0). Shapes: x (...) -> y (same).

    Saves only the boolean mask x > 0 (one byte an entry): it is all the
    backward needs, and unlike y it cannot be corrupted if the caller later
    updates y in place (``y += residual``).
    """
    _checks.check_float("x", x)
    y, mask = _relu_and_mask(x)
    return y, (mask,)


def relu_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy where x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch).

    Derivation: docs/ops/activations.md."""
    (mask,) = ctx
    return _relu_grad(dy, mask)


def gelu_forward(x: Any, approximate: str = "none") -> tuple[Any, tuple]:
    """GELU, y = x Phi(x) with Phi the standard normal CDF. Shapes: x (...) -> y (same).

    ``approximate="none"``: Phi(x) = (1 + erf(x / sqrt 2)) / 2, exact.
    ``approximate="tanh"``: Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2,
    the form GPT-2 was trained with. Saves the slope gelu'(x) (same shape):
    it shares its costly part (the erf or the tanh) with y, so computing it
    here and not again in the backward saves that part. Under
    :func:`~nptransformer.no_grad` only y is computed and nothing is saved.
    """
    _checks.check_float("x", x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
    flat = _flat(x)
    if not is_grad_enabled():
        value = _gelu_tanh if approximate == "tanh" else _gelu_exact
        return _unflat(rowwise(value, flat), x), (None,)
    y, slope = rowwise(_gelu_tanh_and_slope if approximate == "tanh" else _gelu_exact_and_slope, flat)
    return _unflat(y, x), (_unflat(slope, x),)


def gelu_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy * gelu'(x), the slope the forward saved:

    exact: gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).
    tanh:  gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
           t = tanh(sqrt(2/pi) (x + 0.044715 x^3)).
    Derivation: docs/ops/activations.md.
    """
    (slope,) = ctx
    if slope is None:
        raise RuntimeError("gelu_backward: the forward ran under no_grad and saved nothing to differentiate")
    return _unflat(rowwise(_times, _flat(dy), _flat(slope)), slope)


def _flat(a: Any) -> Any:
    return get_array_module(a).reshape(a, (-1,))


def _unflat(flat: Any, like: Any) -> Any:
    return get_array_module(flat).reshape(flat, tuple(like.shape))


def _tanh_of_u(x: Any, x2: Any) -> Any:
    """t = tanh(u) with u = sqrt(2/pi) (x + 0.044715 x^3), computed as x (c + c a x^2) from x2 = x^2."""
    u = x2 * (_SQRT_2_OVER_PI * _GELU_CUBIC)
    u += _SQRT_2_OVER_PI
    u *= x
    return get_array_module(x).tanh(u)


# The GELU bodies below work on one block of a flattened array (see _blocks.rowwise)
# and update their own temporaries in place: 16 passes for y and the slope together,
# against 9 + 21 for the textbook expressions of y and of the backward.
def _gelu_tanh(x: Any) -> Any:
    t = _tanh_of_u(x, x * x)
    t += 1.0
    t *= x
    t *= 0.5  # y = x (1 + t) / 2
    return t


def _gelu_tanh_and_slope(x: Any) -> tuple[Any, Any]:
    # gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) du/dx, and 1 - t^2 = (1 - t)(1 + t), so
    # gelu'(x) = (1 + t)/2 * (1 + x du/dx (1 - t)),  du/dx = c (1 + 3 a x^2).
    x2 = x * x
    t = _tanh_of_u(x, x2)
    slope = x2 * (3.0 * _SQRT_2_OVER_PI * _GELU_CUBIC)
    slope += _SQRT_2_OVER_PI
    slope *= x  # x du/dx
    slope *= 1.0 - t
    slope += 1.0
    t += 1.0
    slope *= t
    slope *= 0.5
    t *= x
    t *= 0.5  # y = x (1 + t) / 2
    return t, slope


def _gelu_exact(x: Any) -> Any:
    return 0.5 * x * (1.0 + erf(x * _SQRT_HALF))


def _gelu_exact_and_slope(x: Any) -> tuple[Any, Any]:
    xp = get_array_module(x)
    cdf = 0.5 * (1.0 + erf(x * _SQRT_HALF))
    slope = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)  # the density phi(x)
    slope *= x
    slope += cdf  # Phi(x) + x phi(x)
    cdf *= x  # y = x Phi(x)
    return cdf, slope


def _relu_and_mask(x: Any) -> tuple[Any, Any]:
    mask = x > 0
    return get_array_module(x).where(mask, x, 0.0), mask


def _relu_grad(dy: Any, mask: Any) -> Any:
    return get_array_module(dy).where(mask, dy, 0.0)


def _times(dy: Any, slope: Any) -> Any:
    return dy * slope


def _relu(x: Any) -> Any:
    return _relu_and_mask(x)[0]


#: The activations as block functions for ops that apply them to blocks of rows of their own
#: (functional.linear_activation): name -> (value(x), value_and_saved(x) -> (y, saved),
#: grad(dy, saved) -> dx). What is saved is what the ops above save: ReLU's mask, GELU's slope.
BLOCKS = {
    "relu": (_relu, _relu_and_mask, _relu_grad),
    "gelu": (_gelu_exact, _gelu_exact_and_slope, _times),
    "gelu_tanh": (_gelu_tanh, _gelu_tanh_and_slope, _times),
}


def _relu_example(rng: Any) -> Case:
    x = rng.normal(size=(2, 3, 4))
    return Case((x + 0.1 * (x >= 0) - 0.1 * (x < 0),))  # keep entries off the kink at 0


def _relu_cases(t: Any) -> Any:
    return t.float_arrays(t.shapes(0, 3), min_magnitude=0.05).map(lambda x: Case((x,)))


def _gelu_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)),), {"approximate": "none"})


def _gelu_cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        x = draw(t.float_arrays(t.shapes(0, 3), low=-4.0, high=4.0))
        return Case((x,), {"approximate": draw(t.st.sampled_from(GELU_APPROXIMATIONS))})

    return cases()


register_op("relu", relu_forward, relu_backward, example=_relu_example, cases=_relu_cases)
register_op("gelu", gelu_forward, gelu_backward, example=_gelu_example, cases=_gelu_cases)
