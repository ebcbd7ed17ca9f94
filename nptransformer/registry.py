"""The one gradient-check registry: ops, layers and models put themselves under the check here.

Every definition registers itself beside its own code, at the bottom of its
file: an op with :func:`register_op`, a layer or model with
:func:`register_module_check`. The tests, ``python -m nptransformer
gradcheck`` and the docs iterate :data:`OPS` and :data:`MODULE_CHECKS`;
:func:`load_all` imports every package that registers, so nothing depends on
who imported what first.

An op registers

- ``example(rng)``: a deterministic :class:`Case` (NumPy float64 arrays) for
  the ``gradcheck`` CLI, which must run without hypothesis;
- ``cases(t)``: a hypothesis strategy of valid :class:`Case` s, built from
  :mod:`nptransformer.testing` (passed in as ``t``, so hypothesis is imported
  only by the tests);
- ``differentiable``: positions of the arguments ``backward`` returns
  gradients for, in order.

A layer or model registers ``build(rng)`` returning a :class:`ModuleCheck`:
a small float64 module (eval mode or seeded dropout), its inputs and keyword
arguments. This module imports nothing from the library, so every layer of
it (functional, nn, models) may register here.
"""

from __future__ import annotations

import importlib
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


@dataclass
class ModuleCheck:
    """A module ready to check: ``module(*inputs, **kwargs)``; ``wrt`` = input positions to check."""

    module: Any
    inputs: tuple
    kwargs: dict = field(default_factory=dict)
    wrt: tuple | None = None


class CallAs:
    """A module's other forward (``self_attention``, ``cross_attention``, a call with keyword inputs) as
    something :func:`~nptransformer.gradcheck.check_grad` can check.

    ``module.<method>(*inputs[:n], **{k: v for k, v in zip(keywords, inputs[n:])}, **kwargs)``: the last
    ``len(keywords)`` inputs are passed by those names, since check_grad perturbs inputs by position.
    """

    def __init__(self, module: Any, method: str = "__call__", keywords: tuple = ()):
        self.module, self.method, self.keywords = module, method, tuple(keywords)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        n = len(inputs) - len(self.keywords)
        kwargs.update(zip(self.keywords, inputs[n:]))
        return getattr(self.module, self.method)(*inputs[:n], **kwargs)

    def backward(self, d: Any) -> Any:
        return self.module.backward(d)

    def named_parameters(self) -> Any:
        return self.module.named_parameters()

    def clear_saved(self) -> None:
        self.module.clear_saved()


OPS: dict[str, OpSpec] = {}
MODULE_CHECKS: dict[str, Callable[[Any], ModuleCheck]] = {}


def register_op(
    name: str,
    forward: Callable,
    backward: Callable,
    *,
    example: Callable[[Any], Case],
    cases: Callable[[Any], Any],
    differentiable: tuple[int, ...] = (0,),
) -> None:
    """Add a reference op to :data:`OPS` (names are unique)."""
    if name in OPS:
        raise ValueError(f"op {name!r} is registered twice")
    OPS[name] = OpSpec(name, forward, backward, example, cases, tuple(differentiable))


def register_module_check(name: str, build: Callable[[Any], ModuleCheck]) -> None:
    """Add a layer or model example to :data:`MODULE_CHECKS` (names are unique)."""
    if name in MODULE_CHECKS:
        raise ValueError(f"module check {name!r} is registered twice")
    MODULE_CHECKS[name] = build


#: The packages whose modules register ops, kernels, layers and models.
REGISTERING_PACKAGES = ("nptransformer.functional", "nptransformer.kernels", "nptransformer.nn",
                        "nptransformer.models", "nptransformer.distributed")


def load_all() -> None:
    """Import every registering package, so :data:`OPS` and :data:`MODULE_CHECKS` are complete."""
    for name in REGISTERING_PACKAGES:
        importlib.import_module(name)
