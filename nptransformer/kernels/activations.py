"""``gelu.slope``: GELU computing y and its slope gelu'(x) together, in place, in cache-sized row blocks.

The reference saves x, and its backward evaluates the erf (or the tanh) a
second time to get gelu'(x). Both derivatives share their costly part with
y, so this kernel computes y and the slope in one go and saves the slope
(the same memory as x); the backward is a single product. The bodies update
their own temporaries in place: 15 passes for y and the tanh form's slope,
against 9 + 21 for the textbook expressions of y and of the backward. They
run on blocks of 64 Ki elements (:func:`._rows.rowwise`), which stay in the
L2 cache. Under :func:`~nptransformer.no_grad` only y is computed.

:data:`ACTIVATION_BLOCKS` holds the same block bodies (and ReLU's) for
kernels that apply an activation to row blocks of their own
(``linear_activation.fused``).

>>> import numpy as np
>>> y, slope = GeluSlope().forward(np.array([0.0, 1.0]))
>>> y.round(6).tolist(), slope.round(6).tolist()     # slope = Phi(x) + x phi(x)
([0.0, 0.841345], [0.5, 1.083315])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _checks
from ..backend import backend_of, erf, erfcx, get_array_module
from ..functional.activations import GELU_CUBIC, check_gelu_inputs
from ..grad_mode import is_grad_enabled
from ._rows import ROW_SETTINGS, ROW_TEST_SETTINGS, RowKernel, into, rowwise
from .dispatch import register_kernel

#: float32 exact GELU on NumPy takes the kernel from this many elements on: the reference's erf computes in
#: float64 and the kernel's erfcx path in float32, so the kernel was faster from 1 Ki elements (32 against
#: 39 us; equal at 256) where the row machinery of the other kernels only pays from 32 Ki.
EXACT_GELU_REFERENCE_BELOW = 1 << 10

#: The settings of the kernels applying activations: the row settings, and the exact GELU's own threshold.
ACTIVATION_SETTINGS = {**ROW_SETTINGS, "exact_gelu_reference_below": EXACT_GELU_REFERENCE_BELOW}
ACTIVATION_TEST_SETTINGS = {**ROW_TEST_SETTINGS, "exact_gelu_reference_below": 0}


def takes_kernel(x: Any, elements: int, activation: str, settings: dict) -> bool:
    """Whether an activation over ``elements`` entries of x's backend and dtype runs in a kernel (not the
    reference): always on CuPy; on NumPy from ``exact_gelu_reference_below`` entries for float32 exact GELU
    and from ``reference_below`` otherwise."""
    name = backend_of(x)
    if name != "numpy":
        return name == "cupy"
    exact32 = activation == "gelu" and x.dtype == np.float32
    return elements >= settings["exact_gelu_reference_below" if exact32 else "reference_below"]

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _tanh_of_u(x: Any, x2: Any) -> Any:
    """t = tanh(u) with u = sqrt(2/pi) (x + 0.044715 x^3), computed as x (c + c a x^2) from x2 = x^2."""
    u = x2 * (_SQRT_2_OVER_PI * GELU_CUBIC)
    u += _SQRT_2_OVER_PI
    u *= x
    return into(get_array_module(x).tanh, u, out=None if backend_of(u) == "strict" else u)  # in place: no new block


def _gelu_tanh(x: Any, out: Any = None) -> Any:
    t = _tanh_of_u(x, x * x)
    t += 1.0
    y = into(get_array_module(x).multiply, t, x, out=out)
    y *= 0.5  # y = x (1 + t) / 2
    return y


def _gelu_tanh_and_slope(x: Any, out: Any = None) -> tuple[Any, Any]:
    # gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) du/dx, and 1 - t^2 = (1 - t)(1 + t). With s = (1 + t)/2, so that
    # y = x s and 1 - t = 2 (1 - s):  gelu'(x) = s (1 + g (1 - s)),  g = 2 x du/dx = 2 c x (1 + 3 a x^2).
    # 15 passes over the block (the form with (1 + t) and a final halving of y and of the slope took 16).
    xp = get_array_module(x)
    y_out, slope_out = (None, None) if out is None else out
    x2 = x * x
    s = _tanh_of_u(x, x2)
    g = x2 * (6.0 * _SQRT_2_OVER_PI * GELU_CUBIC)
    g += 2.0 * _SQRT_2_OVER_PI
    g *= x  # 2 x du/dx
    s *= 0.5
    s += 0.5  # s = (1 + t) / 2
    g *= 1.0 - s
    g += 1.0
    slope = into(xp.multiply, g, s, out=slope_out)
    y = into(xp.multiply, s, x, out=y_out)  # x is read for the last time: y may be written over it
    return y, slope


def _normal_tail(x: Any) -> tuple[Any, Any, Any]:
    """(a, Phi(-a), exp(-x^2/2)) with a = min(|x|, 20), from erfcx: Phi(-a) = exp(-a^2/2) erfcx(a/sqrt 2) / 2.

    The tail probability has no cancellation (unlike 1 + erf(x/sqrt 2) for x << 0), and the exponential
    is the density's too, so GELU's value and slope share it. Past 20 the tail is 0 in float32; the cap
    keeps a * tail at 0 (not inf * 0) for x = +-inf.
    """
    xp = get_array_module(x)
    a = xp.abs(x)
    a = xp.minimum(a, 20.0, out=a)
    density = a * a
    density *= -0.5
    density = xp.exp(density, out=density)
    tail = erfcx(a, scale=_SQRT_HALF, factor=0.5)  # erfcx(a / sqrt 2) / 2
    tail *= density
    return a, tail, density


def _numpy_float32(x: Any) -> bool:
    """Where the erfcx path runs: float32 NumPy blocks (other dtypes and backends keep erf)."""
    return isinstance(x, np.ndarray) and x.dtype == np.float32


def _gelu_from_tail(x: Any, a_tail: Any, out: Any = None) -> Any:
    """x Phi(x) = max(x, 0) - a Phi(-a), a = |x|, from a_tail = a Phi(-a): no branch on x's sign (np.where
    on a mask that flips at random ran 15 times slower than an arithmetic pass here)."""
    y = into(np.maximum, x, 0.0, out=out)
    y -= a_tail
    return y


def _gelu_exact(x: Any, out: Any = None) -> Any:
    if _numpy_float32(x):
        a, tail, _ = _normal_tail(x)
        tail *= a
        return _gelu_from_tail(x, tail, out)
    cdf = erf(x * _SQRT_HALF)
    cdf += 1.0
    y = into(get_array_module(x).multiply, cdf, x, out=out)
    y *= 0.5
    return y


def _gelu_exact_and_slope(x: Any, out: Any = None) -> tuple[Any, Any]:
    xp = get_array_module(x)
    y_out, slope_out = (None, None) if out is None else out
    if _numpy_float32(x):
        a, tail, slope = _normal_tail(x)  # slope holds exp(-x^2/2) so far
        a *= tail  # a Phi(-a), for y
        cdf = np.copysign(0.5, x)
        cdf += 0.5  # the step: 1 for x >= +0, 0 for x <= -0
        cdf -= np.copysign(tail, x, out=tail)  # Phi(x): 1 - tail above 0, 0 + tail (exact) below
        slope *= _INV_SQRT_2PI
        slope *= x
        slope = into(np.add, slope, cdf, out=slope_out)  # Phi(x) + x phi(x)
        return _gelu_from_tail(x, a, y_out), slope  # x is read for the last time: y may be written over it
    cdf = erf(x * _SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5
    slope = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)  # the density phi(x)
    slope *= x
    slope = into(xp.add, slope, cdf, out=slope_out)  # Phi(x) + x phi(x)
    return into(xp.multiply, cdf, x, out=y_out), slope  # y = x Phi(x)


def _relu(x: Any, out: Any = None) -> Any:
    return into(get_array_module(x).maximum, x, 0.0, out=out)  # NaN stays NaN (the reference's rule)


def _relu_and_mask(x: Any, out: Any = None) -> tuple[Any, Any]:
    xp = get_array_module(x)
    y_out, mask_out = (None, None) if out is None else out
    mask = into(xp.greater, x, 0.0, out=mask_out)
    return _relu(x, y_out), mask  # the mask first: y may be written over x


def _relu_grad(dy: Any, mask: Any, out: Any = None) -> Any:
    xp = get_array_module(dy)
    dx = xp.where(mask, dy, 0.0)  # where, not dy * mask: an infinite dy at a zero of the mask gives 0
    if out is None:
        return dx
    out[...] = dx
    return out


def _times(dy: Any, slope: Any, out: Any = None) -> Any:
    return into(get_array_module(dy).multiply, dy, slope, out=out)


#: The activations as bodies for one block of rows: name -> (value(x), value_and_saved(x) -> (y, saved),
#: grad(dy, saved) -> dx); what is saved is ReLU's mask x > 0 or GELU's slope gelu'(x), x's shape. Each
#: takes ``out`` (an array, or the (y, saved) pair) to write its results into, as :func:`._rows.rowwise`
#: passes it; y's out may be x itself.
ACTIVATION_BLOCKS = {
    "relu": (_relu, _relu_and_mask, _relu_grad),
    "gelu": (_gelu_exact, _gelu_exact_and_slope, _times),
    "gelu_tanh": (_gelu_tanh, _gelu_tanh_and_slope, _times),
}


class GeluSlope(RowKernel):
    """GELU (either form) with y and gelu'(x) computed together, the slope saved instead of x.

    Applies to CuPy arrays (the bodies run whole, one kernel per operator)
    and to NumPy arrays as :func:`takes_kernel` says. Shapes as
    :func:`nptransformer.functional.gelu_forward`; the context is the slope
    (x's shape), or None under :func:`~nptransformer.no_grad`. Settings:
    :data:`ACTIVATION_SETTINGS`, the blocks and slabs of the flattened array
    and the thresholds.
    """

    op = "gelu"
    name = "gelu.slope"
    defaults = ACTIVATION_SETTINGS
    test_settings = ACTIVATION_TEST_SETTINGS

    def applies(self, x: Any, approximate: str = "none") -> bool:
        form = "gelu_tanh" if approximate == "tanh" else "gelu"
        return _checks.is_array(x) and takes_kernel(x, x.size, form, self.settings)

    def forward(self, x: Any, approximate: str = "none") -> tuple[Any, Any]:
        check_gelu_inputs(x, approximate)
        xp = get_array_module(x)
        value, value_and_slope, _ = ACTIVATION_BLOCKS["gelu_tanh" if approximate == "tanh" else "gelu"]
        flat = xp.reshape(x, (-1,))  # (N,): every entry is a row of its own
        y = xp.empty_like(flat)
        if not is_grad_enabled():
            return xp.reshape(rowwise(value, flat, settings=self.settings, out=y), tuple(x.shape)), None
        slope = xp.empty_like(flat)
        rowwise(value_and_slope, flat, settings=self.settings, out=(y, slope))
        return xp.reshape(y, tuple(x.shape)), xp.reshape(slope, tuple(x.shape))

    def backward(self, dy: Any, slope: Any) -> Any:
        if slope is None:
            raise RuntimeError("gelu_backward: the forward ran under no_grad and saved nothing to differentiate")
        if slope.ndim == 0:  # a single entry, and dy may be a Python number
            return dy * slope
        xp = get_array_module(dy)
        flat = xp.reshape(dy, (-1,))
        dx = xp.empty(flat.shape, dtype=xp.result_type(flat, slope), device=flat.device)
        rowwise(_times, flat, xp.reshape(slope, (-1,)), settings=self.settings, out=dx)
        return xp.reshape(dx, tuple(slope.shape))


register_kernel(GeluSlope())
