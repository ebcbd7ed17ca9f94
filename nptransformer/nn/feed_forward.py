"""``FeedForward``: the position-wise feed-forward sublayer, linear2(dropout(act(linear1(x)))).

Every token's vector is widened to ``dim_feedforward``, passed through the
activation and projected back, independently of the other tokens:

    h = act(x W1^T + b1)          # (B, T, C) -> (B, T, F)
    y = dropout(h) W2^T + b2      # (B, T, F) -> (B, T, C)

Given the activation by name, linear1 applies it itself
(``linear1(x, activation=...)``): one op, whose kernel writes the
activation over the (B, T, F) pre-activation a block of rows at a time,
with what its backward needs (docs/ops/linear_activation.md). Given a Module, the activation runs as
that module after linear1.

>>> import numpy as np
>>> ff = FeedForward(4, 16, activation="gelu")
>>> ff(np.ones((2, 3, 4), dtype=np.float32)).shape
(2, 3, 4)
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..registry import ModuleCheck, register_module_check
from .activation import ACTIVATIONS, ReLU
from .dropout import Dropout
from .linear import Linear
from .module import Module


class FeedForward(Module):
    """linear2(dropout(act(linear1(x)))). Shapes: x (..., d_model) -> (..., d_model).

    ``activation``: "relu", "gelu" (exact), "gelu_tanh" (GPT-2's), or a Module
    applied to linear1's output. Submodules ``linear1`` (dim_feedforward,
    d_model), ``dropout``, ``linear2`` (d_model, dim_feedforward): torch's
    names in TransformerEncoderLayer.
    """

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, activation: Any = "relu",
                 bias: bool = True, dtype: Any = "float32"):
        super().__init__()
        _checks.check_positive_int("d_model", d_model)
        _checks.check_positive_int("dim_feedforward", dim_feedforward)
        if not (isinstance(activation, Module) or activation in ACTIVATIONS):
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)} or a Module, got {activation!r}")
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.activation = activation  # a name (linear1 applies it) or a Module (a submodule)

    def forward(self, x: Any) -> Any:
        """x (..., d_model) -> (..., d_model)."""
        if isinstance(self.activation, Module):
            h = self.activation(self.linear1(x))
        else:
            h = self.linear1(x, activation=self.activation)  # (..., C) -> (..., F), activated
        return self.linear2(self.dropout(h))

    def backward(self, dy: Any) -> Any:
        """dL/dy (..., d_model) -> dL/dx (..., d_model); adds into linear1's and linear2's parameters."""
        dh = self.dropout.backward(self.linear2.backward(dy))  # forward: y = dropout(h) W2^T + b2
        if isinstance(self.activation, Module):
            dh = self.activation.backward(dh)
        return self.linear1.backward(dh)  # forward: h = act(x W1^T + b1)

    def extra_repr(self) -> str:
        return "" if isinstance(self.activation, Module) else f"activation={self.activation!r}"


def _check(activation: Any) -> Any:
    def build(rng: Any) -> ModuleCheck:
        ff = FeedForward(4, 6, dropout=0.3, activation=activation, dtype="float64")
        return ModuleCheck(ff, (rng.normal(size=(2, 3, 4)),))

    return build


register_module_check("FeedForward.gelu_tanh", _check("gelu_tanh"))
register_module_check("FeedForward.module", lambda rng: _check(ReLU())(rng))
