"""``Dropout``: zero entries with probability p in training, scale the rest by 1/(1-p)."""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..kernels.ops import dropout_backward, dropout_forward
from ..registry import ModuleCheck, register_module_check
from .module import Module


class Dropout(Module):
    """Inverted dropout; the identity in eval mode. Shapes: x (...) -> (...).

    Masks come from ``generator`` (default: ``backend.default_generator``,
    seeded with ``nptransformer.backend.manual_seed``).
    """

    def __init__(self, p: float = 0.5, generator: Any = None):
        super().__init__()
        _checks.check_probability("p", p)
        self.p, self.generator = p, generator

    def forward(self, x: Any) -> Any:
        """x (...) -> x * mask / (1 - p) in training, x in eval."""
        if not self.training or self.p == 0:  # the identity: no op to dispatch (a decoding step has a dozen)
            _checks.check_float("x", x)
            self.save_for_backward(None)
            return x
        y, ctx = dropout_forward(x, self.p, training=True, generator=self.generator)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """dx = dy * mask / (1 - p) (the same mask as forward); dy itself after an identity forward."""
        ctx = self.saved(dy)
        return dy if ctx is None else dropout_backward(dy, ctx)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _check(rng: Any) -> ModuleCheck:
    # Checked in training mode: check_grad restores the default generator before every forward,
    # so each forward draws the same mask.
    return ModuleCheck(Dropout(0.4), (rng.normal(size=(3, 4)),))


register_module_check("Dropout", _check)
