"""Stochastic gradient descent with momentum, as ``torch.optim.SGD`` computes it."""

from __future__ import annotations

from typing import Any, Iterable

from .. import backend
from .._checks import check_probability
from ..nn.module import Parameter
from .optimizer import Optimizer, check_bool, check_nonnegative, check_positive


class SGD(Optimizer):
    r"""SGD with optional momentum, dampening, Nesterov momentum and L2 weight decay.

    For each parameter ``p`` with gradient ``g`` (any shape), per step:

    .. code-block:: text

        g = g + weight_decay * p                       (if weight_decay != 0)
        b = g                                          (first step with momentum)
        b = momentum * b + (1 - dampening) * g         (later steps)
        g = g + momentum * b   if nesterov else   g = b
        p = p - lr * g

    This is PyTorch's formulation (the buffer starts at the first gradient,
    not at zero; the learning rate multiplies the whole step).

    ``lr`` > 0, ``momentum`` >= 0, ``dampening`` in [0, 1], ``weight_decay``
    >= 0; ``nesterov=True`` needs ``momentum > 0`` and ``dampening == 0``.

    >>> import numpy as np
    >>> from nptransformer.nn import Parameter
    >>> p = Parameter(np.array([1.0])); opt = SGD([p], lr=0.1)
    >>> p.grad = np.array([2.0]); opt.step(); p.data
    array([0.8])
    """

    _checks = {
        "lr": check_positive,
        "momentum": check_nonnegative,
        "dampening": lambda name, v: check_probability(name, v, allow_one=True),
        "nesterov": check_bool,
        "weight_decay": check_nonnegative,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"{where}: nesterov=True needs momentum > 0 and dampening = 0, "
                f"got momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        g = p.grad
        xp = backend.get_array_module(g)
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.data  # a new array: p.grad itself is left as backward wrote it
        momentum = group["momentum"]
        if momentum != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = xp.astype(g, g.dtype, copy=True)
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            buf = state["momentum_buffer"]
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g
