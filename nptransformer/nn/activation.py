"""Activation modules: ``ReLU`` and ``GELU`` (exact or tanh), as in torch.nn."""

from __future__ import annotations

from typing import Any

from ..functional.activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from .module import Module


class ReLU(Module):
    """y = max(x, 0). Shapes: (...) -> (...)."""

    def forward(self, x: Any) -> Any:
        """Elementwise max(x, 0)."""
        y, ctx = relu_forward(x)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """dx = dy where x > 0, else 0."""
        return relu_backward(dy, self.saved())


class GELU(Module):
    """y = x Phi(x) (``approximate="none"``) or GPT-2's tanh form (``"tanh"``). Shapes: (...) -> (...)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        """Elementwise GELU."""
        y, ctx = gelu_forward(x, approximate=self.approximate)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """dx = dy * GELU'(x) (docs/ops/activations.md)."""
        return gelu_backward(dy, self.saved())

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def make_activation(activation: Any) -> Module:
    """"relu" / "gelu" / "gelu_tanh" or a Module instance -> a Module (torch's ``activation`` argument)."""
    if isinstance(activation, Module):
        return activation
    table = {"relu": ReLU, "gelu": GELU, "gelu_tanh": lambda: GELU("tanh")}
    if activation not in table:
        raise ValueError(f"activation must be one of {sorted(table)} or a Module, got {activation!r}")
    return table[activation]()
