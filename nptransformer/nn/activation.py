"""Activation modules: ``ReLU`` and ``GELU`` (exact or tanh), as in torch.nn."""

from __future__ import annotations

from typing import Any

from ..functional.activations import GELU_APPROXIMATIONS
from ..kernels.ops import gelu_backward, gelu_forward, relu_backward, relu_forward
from ..registry import ModuleCheck, register_module_check
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
        return relu_backward(dy, self.saved(dy))


class GELU(Module):
    """y = x Phi(x) (``approximate="none"``) or GPT-2's tanh form (``"tanh"``). Shapes: (...) -> (...)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        """Elementwise GELU."""
        y, ctx = gelu_forward(x, approximate=self.approximate)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """dx = dy * GELU'(x) (docs/ops/activations.md)."""
        return gelu_backward(dy, self.saved(dy))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


#: The activations :class:`~nptransformer.nn.FeedForward` and the Transformer layers know by name (torch's
#: ``activation`` strings, plus GPT-2's "gelu_tanh"); the same names as ``functional.linear_activation``'s.
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def make_activation(activation: Any) -> Module:
    """"relu" / "gelu" / "gelu_tanh" or a Module instance -> a Module (torch's ``activation`` argument)."""
    if isinstance(activation, Module):
        return activation
    table = {"relu": ReLU, "gelu": GELU, "gelu_tanh": lambda: GELU("tanh")}
    if activation not in table:
        raise ValueError(f"activation must be one of {sorted(table)} or a Module, got {activation!r}")
    return table[activation]()


def _check_gelu(rng: Any) -> ModuleCheck:
    return ModuleCheck(GELU("tanh"), (rng.normal(size=(3, 4)),))


register_module_check("GELU", _check_gelu)
