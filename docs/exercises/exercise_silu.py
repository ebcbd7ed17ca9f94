"""Exercise 1: the backward of SiLU with a slope, y = x σ(β x).

σ(t) = 1 / (1 + exp(-t)) and σ'(t) = σ(t) (1 - σ(t)). Write ``silu_backward``: given ``dy`` (dL/dy, the
shape of x) and the context the forward saved, return dx = dL/dx. Hints: product rule on x · σ(βx), then
the chain rule through βx. Do not drop the inner β: at β = 1 a formula without it passes, which is why the
cases below also use β = 1.7 and β = -0.5.

Run ``python docs/exercises/exercise_silu.py`` to check; the solution is solution_silu.py.
"""

from __future__ import annotations

import sys
from typing import Any

from nptransformer.backend import get_array_module


def silu_forward(x: Any, beta: float = 1.0) -> tuple[Any, tuple]:
    """x (...) -> y (...), y = x σ(β x); saves x, σ(β x) and β."""
    xp = get_array_module(x)
    s = 1 / (1 + xp.exp(-beta * x))
    return x * s, (x, s, beta)


def silu_backward(dy: Any, ctx: tuple) -> Any:
    """dy (...) -> dx (...). YOUR CODE: replace the zeros with dL/dx."""
    x, s, beta = ctx
    xp = get_array_module(dy)
    return xp.zeros_like(dy)


def cases(rng: Any) -> list[tuple[tuple, dict]]:
    """(args, kwargs) to check: the default β, two others, a 0-d input."""
    x = rng.normal(size=(3, 4))
    return [((x,), {}), ((x,), {"beta": 1.7}), ((x,), {"beta": -0.5}), ((rng.normal(size=()),), {"beta": 2.0})]


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(silu_forward, silu_backward, cases, "silu"))
