"""Optimizers, gradient clipping and learning-rate schedules (torch.optim-shaped).

A training step::

    model.backward(criterion.backward())
    clip_grad_norm(model.parameters(), 1.0)
    optimizer.step(); schedule.step(); optimizer.zero_grad()

The update rules, as formulas: docs/optim.md.
"""

from .adam import Adam, AdamW
from .clip import clip_grad_norm
from .grad_scaler import GradScaler
from .optimizer import Optimizer, grads_are_finite, param_groups_for_weight_decay
from .schedules import LRSchedule, NoamSchedule, WarmupCosine
from .sgd import SGD

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "clip_grad_norm",
    "GradScaler",
    "grads_are_finite",
    "param_groups_for_weight_decay",
    "LRSchedule",
    "NoamSchedule",
    "WarmupCosine",
]
