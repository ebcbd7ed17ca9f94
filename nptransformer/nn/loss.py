"""``CrossEntropyLoss`` over a last class axis, with ``backward()`` returning dL/dlogits."""

from __future__ import annotations

from typing import Any

from ..kernels.ops import cross_entropy_backward, cross_entropy_forward
from .module import Module


class CrossEntropyLoss(Module):
    """Mean (or sum) negative log-likelihood of ``target`` under softmax(``logits``).

    Shapes: logits (..., C) with the class axis LAST (e.g. (B, T, V)),
    target (...) integer ids; returns a 0-d array. Tokens equal to
    ``ignore_index`` are left out of the mean; ``label_smoothing`` mixes the
    one-hot target with the uniform distribution as torch does.

    >>> import numpy as np
    >>> crit = CrossEntropyLoss()
    >>> loss = crit(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(float(loss), 6) == round(float(np.log(4)), 6)
    True
    >>> crit.backward().shape
    (2, 4)
    """

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction

    def forward(self, logits: Any, target: Any) -> Any:
        """logits (..., C), target (...) -> loss (0-d, or (...) with reduction="none")."""
        loss, ctx = cross_entropy_forward(
            logits, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, reduction=self.reduction
        )
        self.save_for_backward(ctx)
        return loss

    def backward(self, dloss: Any = 1.0) -> Any:
        """dL/dlogits (..., C); ``dloss`` scales it (1.0: the loss itself is L)."""
        return cross_entropy_backward(dloss, self.saved(dloss))

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
