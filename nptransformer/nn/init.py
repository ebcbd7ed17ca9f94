"""Parameter initialisers with ``torch.nn.init`` semantics, seeded by a :class:`~nptransformer.backend.Generator`.

Each ``*_`` function replaces ``param.data`` with fresh values of the same
shape, dtype and backend, and returns the parameter. Random ones draw from
``generator`` (default :data:`nptransformer.backend.default_generator`), so
one seed gives the same weights on every backend.

Fans, for a weight of shape ``(out, in, *k)`` (a Linear weight is
``(out, in)``; a convolution kernel adds the receptive field ``k``):
``fan_in = in * prod(k)``, ``fan_out = out * prod(k)``.

What each samples from, and why:

- ``xavier_uniform_``: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out));
  ``xavier_normal_``: N(0, gain^2 * 2 / (fan_in + fan_out)). Glorot & Bengio:
  forward and backward signal variances stay about equal.
- ``kaiming_uniform_``: U(-b, b), b = gain * sqrt(3 / fan);
  ``kaiming_normal_``: N(0, gain^2 / fan). He et al.: the variance of the
  activations is kept through ReLUs (gain sqrt(2) makes up for the half
  that ReLU zeroes).

U(-b, b) has variance b^2 / 3: hence the 3 and the 6 in the uniform bounds.

>>> import numpy as np
>>> from nptransformer import backend
>>> from nptransformer.nn import Parameter
>>> w = Parameter(np.zeros((64, 32), dtype=np.float32))
>>> _ = xavier_uniform_(w, generator=backend.Generator(0))
>>> w.data.dtype, bool(np.abs(w.data).max() <= np.sqrt(6 / (32 + 64)))
(dtype('float32'), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_float, check_positive_int
from ..backend import dtype_name
from .module import Parameter

_LINEAR_GAIN = ("linear", "identity", "conv1d", "conv2d", "conv3d",
                "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps activation variance after ``nonlinearity`` (``torch.nn.init.calculate_gain``).

    linear/conv/sigmoid: 1; tanh: 5/3; relu: sqrt(2); selu: 3/4;
    leaky_relu: sqrt(2 / (1 + slope^2)), slope = ``param`` (default 0.01).
    """
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"param (negative slope) must be a number, got {param!r}")
        return math.sqrt(2.0 / (1 + slope**2))
    known = (*_LINEAR_GAIN, "tanh", "relu", "leaky_relu", "selu")
    raise ValueError(f"nonlinearity must be one of {known}, got {nonlinearity!r}")


def calculate_fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *k)``, as PyTorch computes them.

    Needs at least 2 dimensions (a bias has no fan).
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with at least 2 dimensions (out, in, ...), got shape {shape}")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def _check_param(param: Any) -> None:
    if not isinstance(param, Parameter):
        raise TypeError(f"param must be a Parameter, got {type(param).__name__}")
    check_float("param.data", param.data)


def _check_std(name: str, std: float) -> None:
    if not std >= 0:
        raise ValueError(f"{name} must be >= 0, got {std!r}")


def _fan(param: Parameter, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(param.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"param has shape {param.shape}: {mode} is 0, nothing to initialise")
    return fan


def _in_place(param: Parameter) -> Any:
    """The parameter's NumPy array when it can be filled in place (no second copy of a large table), else None."""
    data = param.data
    ok = isinstance(data, np.ndarray) and data.flags.c_contiguous and data.flags.writeable
    return data if ok else None


def uniform_(
    param: Parameter, a: float = 0.0, b: float = 1.0, *, generator: backend.Generator | None = None
) -> Parameter:
    """Fill ``param`` with samples of U(a, b)."""
    _check_param(param)
    if not a <= b:
        raise ValueError(f"uniform_ needs a <= b, got a={a!r}, b={b!r}")
    gen = generator or backend.default_generator
    param.data = gen.uniform(param.shape, a, b, dtype=dtype_name(param.dtype), like=param.data, out=_in_place(param))
    return param


def normal_(
    param: Parameter, mean: float = 0.0, std: float = 0.02, *, generator: backend.Generator | None = None
) -> Parameter:
    """Fill ``param`` with samples of N(mean, std^2).

    The default ``std=0.02`` is GPT-2's and BERT's (torch's ``normal_`` defaults to 1).
    """
    _check_param(param)
    _check_std("std", std)
    gen = generator or backend.default_generator
    param.data = gen.normal(param.shape, mean, std, dtype=dtype_name(param.dtype), like=param.data,
                            out=_in_place(param))
    return param


def zeros_(param: Parameter) -> Parameter:
    """Fill ``param`` with 0 (biases, LayerNorm shifts)."""
    _check_param(param)
    param.data = backend.zeros(param.shape, like=param.data)
    return param


def ones_(param: Parameter) -> Parameter:
    """Fill ``param`` with 1 (LayerNorm gains)."""
    _check_param(param)
    param.data = backend.zeros(param.shape, like=param.data) + 1
    return param


def xavier_uniform_(param: Parameter, gain: float = 1.0, *, generator: backend.Generator | None = None) -> Parameter:
    """Glorot uniform: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)). ``param``: 2 or more dims."""
    _check_param(param)
    fan_in, fan_out = calculate_fan_in_and_fan_out(param.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -bound, bound, generator=generator)


def xavier_normal_(param: Parameter, gain: float = 1.0, *, generator: backend.Generator | None = None) -> Parameter:
    """Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)). ``param``: 2 or more dims."""
    _check_param(param)
    fan_in, fan_out = calculate_fan_in_and_fan_out(param.shape)
    return normal_(param, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)


def kaiming_uniform_(
    param: Parameter,
    a: float = 0.0,
    *,
    nonlinearity: str = "leaky_relu",
    mode: str = "fan_in",
    generator: backend.Generator | None = None,
) -> Parameter:
    """He uniform: U(-b, b), b = gain * sqrt(3 / fan), gain = ``calculate_gain(nonlinearity, a)``.

    ``a``: negative slope of a leaky ReLU (0 = ReLU). ``mode``: "fan_in"
    keeps the forward variance, "fan_out" the backward one. ``nonlinearity``
    and ``mode`` are keyword-only, so a call written positionally for
    PyTorch (whose order is ``a, mode, nonlinearity``) fails loudly instead
    of swapping them. ``torch.nn.Linear`` uses ``a=math.sqrt(5)``.
    """
    _check_param(param)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(param, mode))
    return uniform_(param, -bound, bound, generator=generator)


def kaiming_normal_(
    param: Parameter,
    a: float = 0.0,
    *,
    nonlinearity: str = "leaky_relu",
    mode: str = "fan_in",
    generator: backend.Generator | None = None,
) -> Parameter:
    """He normal: N(0, std^2), std = gain / sqrt(fan); arguments as :func:`kaiming_uniform_`."""
    _check_param(param)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(param, mode))
    return normal_(param, 0.0, std, generator=generator)


def scaled_residual_std(n_layer: int, std: float = 0.02) -> float:
    """``std / sqrt(2 * n_layer)``: GPT-2's init std for the projections that write into the residual stream.

    Each of the ``n_layer`` blocks adds two such projections (attention
    output and MLP output) to the residual; scaling their std by
    ``1/sqrt(2 * n_layer)`` keeps the residual's variance from growing
    with depth. Use it with :func:`normal_` on ``attn.c_proj`` / ``mlp.c_proj``.

    >>> round(scaled_residual_std(12), 6)
    0.004082
    """
    check_positive_int("n_layer", n_layer)
    _check_std("std", std)
    return std / math.sqrt(2 * n_layer)
