r"""Learning-rate schedules: closed forms of the step number written into an optimizer's groups.

Steps are numbered from 1: step ``s`` is the ``s``-th call of
``optimizer.step()``. A schedule sets the learning rate of step 1 when it is
built, and each ``schedule.step()`` (call it right after
``optimizer.step()``, as in PyTorch) moves on to the next one::

    schedule = NoamSchedule(optimizer, d_model=512, warmup_steps=4000)
    for batch in data:
        ...
        optimizer.step(); schedule.step(); optimizer.zero_grad()

This matches ``torch.optim.lr_scheduler.LambdaLR`` with
``lr_lambda = lambda epoch: lr(epoch + 1) / base_lr`` (LambdaLR counts
from 0).
"""

from __future__ import annotations

import math
from typing import Any

from .._checks import check_int_at_least, check_positive_int
from .optimizer import Optimizer, check_nonnegative, check_positive


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an nptransformer Optimizer, got {type(optimizer).__name__}")


class LRSchedule:
    """Base of the schedules: ``lr_at(step, base_lr)`` gives each group's learning rate for a step.

    ``base_lrs``: each group's ``lr`` when the schedule was built.
    ``last_step``: how many steps were taken (``schedule.step()`` calls).
    """

    def __init__(self, optimizer: Optimizer):
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        """Learning rate of step ``step`` (1, 2, ...) for a group whose initial lr was ``base_lr``."""
        raise NotImplementedError(f"{type(self).__name__} has no lr_at")

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.last_step + 1, base)

    def step(self) -> None:
        """Advance one step: write the next step's learning rate into every group."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rate each group will use at its next ``optimizer.step()``."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """``{"last_step": int, "base_lrs": [float, ...]}``; the formula's constants come from the constructor."""
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` and rewrite the optimizer's learning rates to match."""
        base_lrs = list(state_dict["base_lrs"])
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state_dict has base_lrs for {len(base_lrs)} groups, "
                f"the optimizer has {len(self.optimizer.param_groups)}"
            )
        self.base_lrs = base_lrs
        self.last_step = int(state_dict["last_step"])
        self._apply()


class NoamSchedule(LRSchedule):
    r"""The schedule of "Attention Is All You Need" (section 5.3): linear warmup, then 1/sqrt(step).

    .. code-block:: text

        lr(s) = factor * d_model^(-1/2) * min(s^(-1/2), s * warmup_steps^(-3/2))

    The two branches meet at ``s = warmup_steps``, the peak. The rate is
    absolute: it replaces the optimizer's ``lr`` in every group (the paper
    pairs it with Adam, betas (0.9, 0.98), eps 1e-9).

    >>> import numpy as np
    >>> from nptransformer.nn import Parameter
    >>> from nptransformer.optim import Adam
    >>> opt = Adam([Parameter(np.zeros(1))])
    >>> sched = NoamSchedule(opt, d_model=64, warmup_steps=4)
    >>> lrs = []
    >>> for _ in range(6):
    ...     lrs.append(round(sched.get_last_lr()[0], 6)); sched.step()
    >>> lrs   # rises to the peak at step 4, then decays like 1/sqrt(step)
    [0.015625, 0.03125, 0.046875, 0.0625, 0.055902, 0.051031]
    """

    def __init__(self, optimizer: Optimizer, d_model: int, warmup_steps: int, factor: float = 1.0):
        check_positive_int("d_model", d_model)
        check_positive_int("warmup_steps", warmup_steps)
        check_positive("factor", factor)
        self.d_model, self.warmup_steps, self.factor = d_model, warmup_steps, factor
        super().__init__(optimizer)

    def lr_at(self, step: int, base_lr: float) -> float:
        """``factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)``; ``base_lr`` is unused."""
        return self.factor * self.d_model**-0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)


class WarmupCosine(LRSchedule):
    r"""Linear warmup from 0 to each group's lr, then a half cosine down to ``min_lr``.

    With ``w = warmup_steps``, ``n = total_steps`` and ``base`` the group's lr:

    .. code-block:: text

        lr(s) = base * s / w                                          for s <= w
        lr(s) = min_lr + (base - min_lr) * (1 + cos(pi * q)) / 2       for s > w,
                q = min((s - w) / (n - w), 1)

    So the peak ``base`` is reached at step ``w``, ``min_lr`` at step ``n``,
    and the rate stays at ``min_lr`` after it. ``warmup_steps=0`` starts
    directly on the cosine. Requires ``0 <= warmup_steps < total_steps``
    and ``0 <= min_lr <= lr`` of every group.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        check_int_at_least("warmup_steps", warmup_steps, 0)
        check_positive_int("total_steps", total_steps)
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps must exceed warmup_steps={warmup_steps}, got {total_steps}")
        check_nonnegative("min_lr", min_lr)
        _check_optimizer(optimizer)
        for i, group in enumerate(optimizer.param_groups):
            if group["lr"] < min_lr:
                raise ValueError(f"min_lr={min_lr!r} exceeds the lr {group['lr']!r} of param_groups[{i}]")
        self.warmup_steps, self.total_steps, self.min_lr = warmup_steps, total_steps, min_lr
        super().__init__(optimizer)

    def lr_at(self, step: int, base_lr: float) -> float:
        """The warmup line up to ``warmup_steps``, the cosine after it (see the class docstring)."""
        if step <= self.warmup_steps:
            return base_lr * step / self.warmup_steps
        q = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))
