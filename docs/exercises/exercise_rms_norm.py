"""Exercise 2: the backward of RMS norm, y = x̂ ⊙ weight with x̂ = x r, r = 1 / √(mean(x²) + ε).

The mean is over the last axis (the C channels of one row); every other axis is a row. Write
``rms_norm_backward``: given dy (..., C) return (dx (..., C), dweight (C,)). Hints: first dx̂ = dy ⊙ weight;
then differentiate r with respect to each x_j of the row (every x_j reaches every x̂_i through r); the
weight is used by every row, so its gradient sums over all of them. The cases use ε = 0.5 as well as 1e-6,
so a backward that forgets ε somewhere fails. docs/ops/normalization.md derives the layer-norm version.

Run ``python docs/exercises/exercise_rms_norm.py`` to check; the solution is solution_rms_norm.py.
"""

from __future__ import annotations

import sys
from typing import Any

from nptransformer.backend import get_array_module


def rms_norm_forward(x: Any, weight: Any, eps: float = 1e-6) -> tuple[Any, tuple]:
    """x (..., C), weight (C,) -> y (..., C); saves x̂, r (..., 1) and weight."""
    xp = get_array_module(x)
    r = 1 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)
    xhat = x * r
    return xhat * weight, (xhat, r, weight)


def rms_norm_backward(dy: Any, ctx: tuple) -> tuple[Any, Any]:
    """dy (..., C) -> (dx (..., C), dweight (C,)). YOUR CODE: replace the zeros."""
    xhat, r, weight = ctx
    xp = get_array_module(dy)
    return xp.zeros_like(dy), xp.zeros_like(weight)


def cases(rng: Any) -> list[tuple[tuple, dict]]:
    """(args, kwargs) to check: a (B, T, C) batch, one row, a large ε."""
    x, w = rng.normal(size=(2, 3, 4)), rng.normal(size=4)
    return [((x, w), {}), ((rng.normal(size=5), rng.normal(size=5)), {}), ((x, w), {"eps": 0.5})]


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(rms_norm_forward, rms_norm_backward, cases, "rms_norm"))
