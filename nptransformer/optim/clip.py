"""Gradient clipping by global norm, as ``torch.nn.utils.clip_grad_norm_`` computes it."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .. import backend
from ..nn.module import Parameter
from .optimizer import check_real


def _vector_norm(xp: Any, a: Any, norm_type: float) -> Any:
    if norm_type == math.inf:
        return xp.max(xp.abs(a))
    if norm_type == 2.0:
        return xp.sqrt(xp.sum(a * a))
    return xp.sum(xp.abs(a) ** norm_type) ** (1.0 / norm_type)


def clip_grad_norm(params: Iterable[Parameter] | Parameter, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = True) -> Any:
    r"""Scale all gradients together so that their joint norm is at most ``max_norm``; in place.

    With ``g_i`` the gradient of parameter ``i`` (any shape; parameters whose
    grad is None are skipped):

    .. code-block:: text

        total = || ( ||g_1||_p, ||g_2||_p, ... ) ||_p      (= the p-norm of all entries joined)
        coef  = min(max_norm / (total + 1e-6), 1)
        g_i   = coef * g_i

    The ``1e-6`` keeps the division finite for zero gradients and makes a
    gradient of norm exactly ``max_norm`` shrink very slightly, as in PyTorch.
    The gradients are always multiplied (by 1 when no clipping is needed), so
    the function never asks the device whether clipping happened.

    ``norm_type``: p > 0, or ``math.inf`` for the largest absolute entry.
    ``max_norm``: >= 0; ``math.inf`` measures the norm without clipping.

    The norm is accumulated in at least float32: float16 gradients of 60,000
    would overflow a float16 sum of squares to inf. A NaN or inf in any
    gradient makes ``total`` non-finite; then, with ``error_if_nonfinite``
    (the default), FloatingPointError is raised and no gradient is changed;
    without it ``total`` is returned as it is and every gradient is left
    unchanged (multiplied by 1: a NaN coefficient would spread the NaN to
    every gradient, and inf would zero the finite ones).

    Returns ``total``, the norm *before* clipping, as a 0-d array on the
    gradients' backend (a NumPy scalar under numpy). It is not a Python
    float, because that would copy from the device at every step; reading
    it is the caller's explicit choice: ``float(backend.to_numpy(total))``.
    With no gradients at all it is a 0-d zero.

    >>> import numpy as np
    >>> from nptransformer.nn import Parameter
    >>> p = Parameter(np.zeros(2)); p.grad = np.array([3.0, 4.0])
    >>> clip_grad_norm([p], max_norm=1.0)
    np.float64(5.0)
    >>> p.grad.round(6)
    array([0.6, 0.8])
    """
    params = [params] if isinstance(params, Parameter) else list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{i}] must be a Parameter, got {type(p).__name__}")
    check_real("max_norm", max_norm, low=0.0, inclusive=True, finite=False)
    check_real("norm_type", norm_type, low=0.0, inclusive=False, finite=False)
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError(f"error_if_nonfinite must be True or False, got {error_if_nonfinite!r}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return backend.zeros((), like=params[0].data if params else None)
    xp = backend.get_array_module(*grads)
    # Norm of the per-parameter norms (PyTorch's order of operations, so results agree to rounding).
    total = _vector_norm(xp, xp.stack([_vector_norm(xp, _at_least_float32(xp, g), norm_type) for g in grads]),
                         norm_type)
    finite = xp.isfinite(total)
    if error_if_nonfinite and not bool(backend.to_numpy(finite)):
        raise FloatingPointError(f"clip_grad_norm: the gradients' norm is {float(backend.to_numpy(total))}: some "
                                 "gradient holds NaN or inf (pass error_if_nonfinite=False to get the norm anyway)")
    coef = xp.where(finite, xp.minimum(max_norm / (total + 1e-6), 1.0), 1.0)
    for g in grads:
        g *= xp.astype(coef, g.dtype)
    return total


def _at_least_float32(xp: Any, g: Any) -> Any:
    return xp.astype(g, xp.float32) if backend.dtype_name(g.dtype) == "float16" else g
