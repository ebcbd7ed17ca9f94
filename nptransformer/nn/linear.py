"""``Linear``: y = x W^T + b, as ``torch.nn.Linear``; optionally with an activation after it, as one op."""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..kernels import ops
from ..registry import ModuleCheck, register_module_check
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b.

    Shapes: x (..., in_features) -> y (..., out_features); ``weight``
    (out_features, in_features), ``bias`` (out_features,). Initialised as
    PyTorch does: U(-1/sqrt(in), 1/sqrt(in)) for both.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_int_at_least("in_features", in_features, 0)  # 0 is allowed, as in torch: y = b
        _checks.check_int_at_least("out_features", out_features, 0)
        self.in_features, self.out_features = in_features, out_features
        g = generator or backend.default_generator
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(g.uniform((out_features, in_features), -bound, bound, dtype=dtype))
        self.bias = Parameter(g.uniform((out_features,), -bound, bound, dtype=dtype)) if bias else None

    def forward(self, x: Any, activation: str | None = None) -> Any:
        """x (..., in_features) -> (..., out_features).

        ``activation`` ("relu", "gelu", "gelu_tanh"): return act(x W^T + b),
        computed as the op ``linear_activation`` (whose kernel never stores
        the pre-activation whole); the backward then goes through the
        activation too. torch.nn.Linear has no such argument; without it
        this is torch's layer.
        """
        bias = self.bias.data if self.bias is not None else None
        if activation is None:
            y, ctx = ops.linear_forward(x, self.weight.data, bias)
        else:
            y, ctx = ops.linear_activation_forward(x, self.weight.data, bias, activation=activation)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """Adds dW = dh^T x and db = sum(dh) into the parameters; returns dx = dh W.

        dh = dy, or dy * act'(h) when the forward applied an activation (both
        ops' backwards return (dx, dweight, dbias)).
        """
        dx, dweight, dbias = ops.linear_backward(dy, self.saved(dy))
        self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_linear(rng: Any) -> ModuleCheck:
    return ModuleCheck(Linear(4, 3, dtype="float64"), (rng.normal(size=(2, 3, 4)),))


def _check_linear_gelu(rng: Any) -> ModuleCheck:
    return ModuleCheck(Linear(4, 3, dtype="float64"), (rng.normal(size=(2, 3, 4)),), {"activation": "gelu"})


register_module_check("Linear", _check_linear)
register_module_check("Linear.gelu", _check_linear_gelu)
