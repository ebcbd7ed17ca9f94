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
from ..registry import Case, register_op

GELU_APPROXIMATIONS = ("none", "tanh")
#: GPT-2's coefficient of x^3 inside the tanh of the approximate GELU.
GELU_CUBIC = 0.044715
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def relu_forward(x: Any) -> tuple[Any, tuple]:
    """y = max(x, 0). Shapes: x (...) -> y (same).

    Saves only the boolean mask x > 0 (one byte an entry): it is all the
    backward needs, and unlike y it cannot be corrupted if the caller later
    updates y in place (``y += residual``).
    """
    _checks.check_float("x", x)
    xp = get_array_module(x)
    mask = x > 0
    return xp.where(mask | xp.isnan(x), x, 0.0), (mask,)  # NaN stays NaN, as in torch: never hidden as 0


def relu_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy where x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch).

    Derivation: docs/ops/activations.md."""
    (mask,) = ctx
    return get_array_module(dy).where(mask, dy, 0.0)  # forward: y = x where x > 0, else 0


def check_gelu_inputs(x: Any, approximate: str) -> None:
    """The argument checks of :func:`gelu_forward`, shared with its kernel."""
    _checks.check_float("x", x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")


def gelu_forward(x: Any, approximate: str = "none") -> tuple[Any, tuple]:
    """GELU, y = x Phi(x) with Phi the standard normal CDF. Shapes: x (...) -> y (same).

    ``approximate="none"``: Phi(x) = (1 + erf(x / sqrt 2)) / 2, exact.
    ``approximate="tanh"``: Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2,
    the form GPT-2 was trained with. Saves x: gelu'(x) is a function of x
    alone, and y would not do (GELU is not monotonic, so two inputs can
    share an output but not a slope).
    """
    check_gelu_inputs(x, approximate)
    if approximate == "tanh":
        y = 0.5 * x * (1.0 + _tanh_inner(x))
    else:
        y = x * _normal_cdf(x)
    return y, (x, approximate)


def gelu_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy * gelu'(x):

    exact: gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).
    tanh:  gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
           t = tanh(sqrt(2/pi) (x + 0.044715 x^3)).
    Derivation: docs/ops/activations.md.
    """
    x, approximate = ctx
    if approximate == "tanh":
        t = _tanh_inner(x)  # forward: t = tanh(u), recomputed from the saved x
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)  # forward: u = sqrt(2/pi) (x + 0.044715 x^3)
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du  # forward: y = x (1 + tanh(u)) / 2
    else:
        phi = _INV_SQRT_2PI * get_array_module(x).exp(-0.5 * x * x)  # the normal density, Phi' = phi
        slope = _normal_cdf(x) + x * phi  # forward: y = x Phi(x)
    return dy * slope


def _normal_cdf(x: Any) -> Any:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    return 0.5 * (1.0 + erf(x * _SQRT_HALF))


def _tanh_inner(x: Any) -> Any:
    """t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), the tanh GELU's stand-in for 2 Phi(x) - 1."""
    return get_array_module(x).tanh(_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x))


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
