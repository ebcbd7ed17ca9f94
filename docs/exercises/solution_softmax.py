"""Solution to exercise 3 (exercise_softmax.py): the backward of softmax.

dx_j = Σ_i dy_i y_i (δ_ij - y_j) = y_j (dy_j - Σ_i dy_i y_i), row by row along the axis:

    dx = y ⊙ (dy - Σ_axis dy ⊙ y).
"""

from __future__ import annotations

import sys
from typing import Any

from exercise_softmax import cases, softmax_forward

from nptransformer.backend import get_array_module


def softmax_backward(dy: Any, ctx: tuple) -> Any:
    """dy (...) -> dx (...) = y ⊙ (dy - Σ_axis dy ⊙ y)."""
    y, axis = ctx
    xp = get_array_module(dy)
    return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))  # forward: y = exp(x - m) / Σ exp(x - m)


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(softmax_forward, softmax_backward, cases, "softmax (solution)"))
