"""Exercise 3: the backward of softmax along an axis, y_i = exp(x_i - m) / Σ_k exp(x_k - m), m = max_k x_k.

Write ``softmax_backward``: given dy (the shape of x) return dx. Hints: the Jacobian of one row is
∂y_i/∂x_j = y_i (δ_ij - y_j) (the shift m changes nothing); contract it with dy without building it, in
O(n) per row. The cases use ``axis=0`` too, so do not assume the last axis. docs/ops/softmax.md derives it.

Run ``python docs/exercises/exercise_softmax.py`` to check; the solution is solution_softmax.py.
"""

from __future__ import annotations

import sys
from typing import Any

from nptransformer.backend import get_array_module


def softmax_forward(x: Any, axis: int = -1) -> tuple[Any, tuple]:
    """x (...) -> y (...), rows along ``axis`` summing to 1; saves y and the axis."""
    xp = get_array_module(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))  # the shift keeps exp from overflowing
    y = e / xp.sum(e, axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dy: Any, ctx: tuple) -> Any:
    """dy (...) -> dx (...). YOUR CODE: replace the zeros with dL/dx."""
    y, axis = ctx
    xp = get_array_module(dy)
    return xp.zeros_like(dy)


def cases(rng: Any) -> list[tuple[tuple, dict]]:
    """(args, kwargs) to check: the last axis, the first, and logits near 1000 (exp would overflow unshifted)."""
    x = rng.normal(size=(3, 5))
    return [((x,), {}), ((x,), {"axis": 0}), ((x * 3 + 1000,), {})]


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(softmax_forward, softmax_backward, cases, "softmax"))
