"""``Linear``: y = x W^T + b, as ``torch.nn.Linear``."""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from ..functional.linear import linear_backward, linear_forward
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b.

    Shapes: x (..., in_features) -> y (..., out_features); ``weight``
    (out_features, in_features), ``bias`` (out_features,). Initialised as
    PyTorch does: U(-1/sqrt(in), 1/sqrt(in)) for both.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        g = generator or backend.default_generator
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(g.uniform((out_features, in_features), -bound, bound, dtype=dtype))
        self.bias = Parameter(g.uniform((out_features,), -bound, bound, dtype=dtype)) if bias else None

    def forward(self, x: Any) -> Any:
        """x (..., in_features) -> (..., out_features)."""
        y, ctx = linear_forward(x, self.weight.data, self.bias.data if self.bias is not None else None)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """Adds dW = dy^T x and db = sum(dy) into the parameters; returns dx = dy W."""
        dx, dweight, dbias = linear_backward(dy, self.saved())
        self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
