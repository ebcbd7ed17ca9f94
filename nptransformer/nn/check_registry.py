"""Layers and models put themselves under the gradient check here.

``register_module_check(name, build)``: ``build(rng)`` returns a
:class:`ModuleCheck` — a small float64 module (eval mode or seeded dropout),
its inputs and keyword arguments. The ``gradcheck`` CLI and the tests iterate
:data:`MODULE_CHECKS`, exactly as they iterate the op registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class ModuleCheck:
    """A module ready to check: ``module(*inputs, **kwargs)``; ``wrt`` = input positions to check."""

    module: Any
    inputs: tuple
    kwargs: dict = field(default_factory=dict)
    wrt: tuple | None = None


MODULE_CHECKS: dict[str, Callable[[Any], ModuleCheck]] = {}


def register_module_check(name: str, build: Callable[[Any], ModuleCheck]) -> None:
    """Add a layer or model example to :data:`MODULE_CHECKS` (names are unique)."""
    if name in MODULE_CHECKS:
        raise ValueError(f"module check {name!r} is registered twice")
    MODULE_CHECKS[name] = build
