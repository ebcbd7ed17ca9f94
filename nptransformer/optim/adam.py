"""Adam (L2 weight decay) and AdamW (decoupled weight decay), as ``torch.optim`` computes them.

The two share the moment update; they differ only in where weight decay
enters. Adam adds ``weight_decay * p`` to the gradient, so the decay is
rescaled by the adaptive denominator like any gradient; AdamW shrinks the
parameter directly, ``p <- p * (1 - lr * weight_decay)``, before the Adam
step (Loshchilov & Hutter, "Decoupled Weight Decay Regularization").
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .. import backend
from ..nn.module import Parameter
from .optimizer import Optimizer, check_betas, check_nonnegative, check_positive


class Adam(Optimizer):
    r"""Adam with L2 weight decay (``torch.optim.Adam``).

    For each parameter ``p`` with gradient ``g`` (any shape), at step t = 1, 2, ...:

    .. code-block:: text

        g = g + weight_decay * p                       (if weight_decay != 0)
        m = beta1 * m + (1 - beta1) * g                (m, v start at zero)
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The factors ``1 - beta^t`` undo the pull of the zero start on m and v.
    ``lr`` > 0, ``betas`` in [0, 1), ``eps`` >= 0, ``weight_decay`` >= 0.
    State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v),
    arrays of the parameter's shape, dtype and backend.

    >>> import numpy as np
    >>> from nptransformer.nn import Parameter
    >>> p = Parameter(np.array([1.0, 1.0])); opt = Adam([p], lr=0.1)
    >>> p.grad = np.array([3.0, -0.5]); opt.step()
    >>> p.data.round(6)     # the first step moves each entry by lr * sign(g)
    array([0.9, 1.1])
    """

    _decoupled = False  # where weight decay enters; AdamW flips it
    # eps > 0: with eps = 0 a zero gradient entry makes the update 0 / 0
    _checks = {"lr": check_positive, "betas": check_betas, "eps": check_positive, "weight_decay": check_nonnegative}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        g = p.grad
        if not state:
            state.update(step=0, exp_avg=backend.zeros(p.shape, like=p.data),
                         exp_avg_sq=backend.zeros(p.shape, like=p.data))
        state["step"] += 1
        t = state["step"]
        if wd != 0:
            if self._decoupled:
                p.data *= 1 - lr * wd
            else:
                g = g + wd * p.data  # a new array: p.grad itself is left as backward wrote it
        # In place wherever the algebra allows: one temporary at a time, no full-size
        # array for each operator (the moments and the parameter keep their memory).
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        g2 = g * g
        g2 *= 1 - beta2
        v += g2
        xp = backend.get_array_module(g)
        denom = xp.sqrt(v)
        denom /= math.sqrt(1 - beta2**t)
        denom += group["eps"]
        step = m / denom
        step *= lr / (1 - beta1**t)
        p.data -= step


class AdamW(Adam):
    r"""Adam with decoupled weight decay (``torch.optim.AdamW``).

    Per step, before the Adam update of :class:`Adam` (run without L2 term):

    .. code-block:: text

        p = p * (1 - lr * weight_decay)

    The decay does not pass through m and v, so every weight shrinks by the
    same factor whatever its gradient history. Default ``weight_decay=0.01``
    as in PyTorch; give biases and norm gains their own group with
    ``weight_decay=0.0`` (see :func:`param_groups_for_weight_decay`).
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
