"""``GatedFeedForward``: the GLU-family feed-forward of T5 v1.1 (gated-GELU), LLaMA (SwiGLU) and others.

Two projections of the same input, one passed through the activation, are
multiplied elementwise before the output projection:

    g = act(x W_g^T)              # (B, T, C) -> (B, T, F), the gate
    u = x W_1^T                   # (B, T, C) -> (B, T, F), the value
    y = dropout(g * u) W_2^T      # (B, T, F) -> (B, T, C)

Backward of the product: dg = dh * u and du = dh * g, and x collects the
gradient of both branches, dx = dg' W_g + du W_1 (dg' = dg through the
activation, which the gate's Linear applies itself).

>>> import numpy as np
>>> ff = GatedFeedForward(4, 8, activation="gelu_tanh", bias=False)
>>> ff(np.ones((2, 3, 4), dtype=np.float32)).shape
(2, 3, 4)
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..registry import ModuleCheck, register_module_check
from .activation import ACTIVATIONS
from .dropout import Dropout
from .linear import Linear
from .module import Module


class GatedFeedForward(Module):
    """linear2(dropout(act(gate(x)) * linear1(x))). Shapes: x (..., d_model) -> (..., d_model).

    ``activation``: "relu", "gelu" (exact) or "gelu_tanh" (T5 v1.1's
    ``gelu_new``). Submodules ``gate`` and ``linear1`` (dim_feedforward,
    d_model), ``dropout``, ``linear2`` (d_model, dim_feedforward).
    """

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, activation: str = "gelu_tanh",
                 bias: bool = True, dtype: Any = "float32"):
        super().__init__()
        _checks.check_positive_int("d_model", d_model)
        _checks.check_positive_int("dim_feedforward", dim_feedforward)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.gate = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.activation = activation

    def forward(self, x: Any) -> Any:
        """x (..., d_model) -> (..., d_model)."""
        g = self.gate(x, activation=self.activation)  # (..., F), activated by the same op
        u = self.linear1(x)  # (..., F)
        self.save_for_backward((g, u))
        return self.linear2(self.dropout(g * u))

    def backward(self, dy: Any) -> Any:
        """dL/dy (..., d_model) -> dL/dx (..., d_model); adds into gate's, linear1's and linear2's parameters."""
        g, u = self.saved()
        dh = self.dropout.backward(self.linear2.backward(dy))  # forward: y = dropout(h) W2^T
        du = self.linear1.backward(dh * g)  # forward: h = g * u, so du = dh * g; u = x W1^T
        return self.gate.backward(dh * u) + du  # dg = dh * u; g = act(x Wg^T); x feeds both branches

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def _check(rng: Any) -> ModuleCheck:
    ff = GatedFeedForward(4, 6, dropout=0.3, activation="gelu_tanh", dtype="float64")
    return ModuleCheck(ff, (rng.normal(size=(2, 3, 4)),))


register_module_check("GatedFeedForward", _check)
