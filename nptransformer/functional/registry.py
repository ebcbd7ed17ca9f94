"""The op registry: one list that puts every primitive op under the gradient check.

Each op file registers its forward/backward pair with

- ``example(rng)``: a deterministic :class:`Case` (NumPy float64 arrays) for
  the ``gradcheck`` CLI, which must run without hypothesis;
- ``cases(t)``: a hypothesis strategy of valid :class:`Case` s, built from
  :mod:`nptransformer.testing` (passed in as ``t``, so hypothesis is imported
  only by the tests);
- ``differentiable``: positions of the arguments ``backward`` returns
  gradients for, in order.

The tests, the CLI and the docs all iterate :data:`OPS`; a test fails if a
public ``*_forward`` in :mod:`nptransformer.functional` is missing from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Case:
    """Inputs of one op call: positional ``args`` and keyword ``kwargs``."""

    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OpSpec:
    """A registered op: name, forward, backward, inputs to check it on."""

    name: str
    forward: Callable
    backward: Callable
    example: Callable[[Any], Case]
    cases: Callable[[Any], Any]
    differentiable: tuple[int, ...] = (0,)


OPS: dict[str, OpSpec] = {}


def register(
    name: str,
    forward: Callable,
    backward: Callable,
    *,
    example: Callable[[Any], Case],
    cases: Callable[[Any], Any],
    differentiable: tuple[int, ...] = (0,),
) -> None:
    """Add an op to :data:`OPS` (names are unique)."""
    if name in OPS:
        raise ValueError(f"op {name!r} is registered twice")
    OPS[name] = OpSpec(name, forward, backward, example, cases, tuple(differentiable))
