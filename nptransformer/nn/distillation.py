"""``DistillationLoss``: train a student on a teacher's softened distribution and the true labels."""

from __future__ import annotations

from typing import Any, Callable

from ..kernels import ops
from .module import Module


class DistillationLoss(Module):
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, target), mean over tokens.

    Shapes: student logits (..., C), target (...) ids, teacher logits
    (..., C); returns a 0-d loss. The op: ``functional.distillation_forward``
    (docs/ops/distillation.md). ``teacher_logits``: a callable returning the
    teacher's logits for the current batch, used when forward gets none (so
    that it fits :class:`~nptransformer.training.Trainer`'s
    ``criterion(model(*inputs), targets)``).

    >>> import numpy as np
    >>> crit = DistillationLoss(temperature=2.0, alpha=0.0)
    >>> float(crit(np.zeros((2, 4)), np.array([0, 3]), np.ones((2, 4)))) == float(np.log(4))
    True
    """

    def __init__(self, temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100,
                 teacher_logits: Callable[[], Any] | None = None):
        super().__init__()
        self.temperature, self.alpha, self.ignore_index = temperature, alpha, ignore_index
        self.teacher_logits = teacher_logits

    def forward(self, logits: Any, target: Any, teacher_logits: Any = None) -> Any:
        if teacher_logits is None:
            if self.teacher_logits is None:
                raise ValueError("DistillationLoss needs teacher_logits: pass them, or give the loss a "
                                 "teacher_logits callable")
            teacher_logits = self.teacher_logits()
        loss, ctx = ops.distillation_forward(logits, teacher_logits, target, temperature=self.temperature,
                                             alpha=self.alpha, ignore_index=self.ignore_index)
        self.save_for_backward(ctx)
        return loss

    def backward(self, dloss: Any = 1.0) -> Any:
        """dL/d(student logits) (..., C)."""
        return ops.distillation_backward(dloss, self.saved(dloss))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
