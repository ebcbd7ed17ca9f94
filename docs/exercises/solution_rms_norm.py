"""Solution to exercise 2 (exercise_rms_norm.py): the backward of RMS norm.

With dx̂ = dy ⊙ weight and ∂r/∂x_j = -½ (mean(x²) + ε)^(-3/2) · 2 x_j / C = -r² x̂_j / C
(ε stays inside r),

    ∂x̂_i/∂x_j = r δ_ij + x_i ∂r/∂x_j = r (δ_ij - x̂_i x̂_j / C),
    dx = r ⊙ (dx̂ - x̂ ⊙ mean(dx̂ ⊙ x̂)),          dweight = Σ_rows dy ⊙ x̂.
"""

from __future__ import annotations

import sys
from typing import Any

from exercise_rms_norm import cases, rms_norm_forward

from nptransformer.backend import get_array_module


def rms_norm_backward(dy: Any, ctx: tuple) -> tuple[Any, Any]:
    """dy (..., C) -> (dx (..., C), dweight (C,))."""
    xhat, r, weight = ctx
    xp = get_array_module(dy)
    dxhat = dy * weight  # forward: y = xhat * weight
    dx = r * (dxhat - xhat * xp.mean(dxhat * xhat, axis=-1, keepdims=True))  # forward: xhat = x * r(x)
    dweight = xp.sum(xp.reshape(dy * xhat, (-1, weight.shape[0])), axis=0)  # weight is shared by every row
    return dx, dweight


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(rms_norm_forward, rms_norm_backward, cases, "rms_norm (solution)"))
