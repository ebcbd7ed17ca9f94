"""Solution to exercise 1 (exercise_silu.py): the backward of y = x σ(β x).

Product rule, then the chain rule through β x:

    dy/dx = σ(βx) + x · σ'(βx) · β = s + β x s (1 - s),      s = σ(βx),

and the backward multiplies the upstream gradient by it entry by entry: dx = dy ⊙ (s + β x s (1 - s)).
"""

from __future__ import annotations

import sys
from typing import Any

from exercise_silu import cases, silu_forward


def silu_backward(dy: Any, ctx: tuple) -> Any:
    """dy (...) -> dx (...) = dy ⊙ (s + β x s (1 - s))."""
    x, s, beta = ctx
    return dy * (s + beta * x * s * (1 - s))  # forward: y = x * s, s = σ(β x)


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(silu_forward, silu_backward, cases, "silu (solution)"))
