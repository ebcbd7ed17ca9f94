"""The two conjugate communication ops of tensor parallelism (Megatron-LM's f and g).

A layer split across a group of N processes (each holding a slice of the
weights) needs a sum over the group exactly once per direction:

    copy_to_group:      forward  y = x                 (x is replicated: every rank holds it)
                        backward dx = sum_r dy_r        (each rank's slice saw x: add their gradients)
    reduce_from_group:  forward  y = sum_r x_r          (each rank holds a partial sum)
                        backward dx_r = dy              (y was replicated, so is its gradient)

Each is the other's transpose: the Jacobian of a copy to N ranks is the
stacked identity [I; ...; I], that of a sum over N ranks is [I ... I].
``group`` is any object with ``allreduce(x) -> sum over ranks`` (a
:class:`nptransformer.distributed.Communicator`); ``None`` is a group of
one process, where both ops are the identity, which is how the gradient
suite checks them.

>>> import numpy as np
>>> y, ctx = copy_to_group_forward(np.ones(3))
>>> copy_to_group_backward(np.full(3, 2.0), ctx).tolist()
[2.0, 2.0, 2.0]

Derivation: docs/ops/collectives.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..registry import Case, register_op


def _check_group(group: Any) -> None:
    if group is not None and not callable(getattr(group, "allreduce", None)):
        raise TypeError(f"group must be None or have an allreduce(x) method, got {type(group).__name__}")


def copy_to_group_forward(x: Any, group: Any = None) -> tuple[Any, Any]:
    """y = x, entering a region split across ``group``. Shapes: x (...) -> y (same). Saves the group only."""
    _checks.check_float("x", x)
    _check_group(group)
    return x, group


def copy_to_group_backward(dy: Any, ctx: Any) -> Any:
    """dx = sum over the group's ranks of dy_r: every rank's slice of the next layer used x.

    Derivation: docs/ops/collectives.md."""
    group = ctx
    return dy if group is None else group.allreduce(dy)  # forward: y = x on every rank


def reduce_from_group_forward(x: Any, group: Any = None) -> tuple[Any, Any]:
    """y = sum over ``group``'s ranks of x_r, leaving a split region. Shapes: x (...) -> y (same)."""
    _checks.check_float("x", x)
    _check_group(group)
    return (x if group is None else group.allreduce(x)), group


def reduce_from_group_backward(dy: Any, ctx: Any) -> Any:
    """dx_r = dy on every rank: each partial sum x_r enters y with coefficient 1.

    Derivation: docs/ops/collectives.md."""
    return dy  # forward: y = sum_r x_r


def _example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)),))


def _cases(t: Any) -> Any:
    return t.float_arrays(t.shapes(1, 3)).map(lambda x: Case((x,)))


register_op("copy_to_group", copy_to_group_forward, copy_to_group_backward, example=_example, cases=_cases)
register_op("reduce_from_group", reduce_from_group_forward, reduce_from_group_backward, example=_example,
            cases=_cases)
