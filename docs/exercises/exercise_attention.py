"""Exercise 4: the backward of scaled dot-product attention, out = softmax(q kᵀ · τ + mask) v.

Shapes: q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> out (..., Tq, Dv); τ = 1/√D unless ``scale`` is
given; with ``causal=True`` query i may not read key j > i (its score becomes -inf, its probability 0).
Write ``attention_backward``: given dout return (dq, dk, dv). Hints: name the forward's arrays (scores A,
probabilities P) and reverse it line by line: two matmuls (docs/ops/linear.md: y = x1 x2 gives
dx1 = dy x2ᵀ, dx2 = x1ᵀ dy), then the softmax backward of exercise 3 along the keys; the mask needs no
code of its own. Use ``xp.matmul`` and ``xp.matrix_transpose`` (it swaps the last two axes only). The cases
use a causal mask, Tq ≠ Tk and a scale other than 1/√D. docs/ops/attention.md derives it.

Run ``python docs/exercises/exercise_attention.py`` to check; the solution is solution_attention.py.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from nptransformer.backend import arange, get_array_module


def attention_forward(q: Any, k: Any, v: Any, causal: bool = False, scale: float | None = None) -> tuple[Any, tuple]:
    """q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> out (..., Tq, Dv); saves q, k, v, P and τ."""
    xp = get_array_module(q)
    tau = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    A = xp.matmul(q, xp.matrix_transpose(k)) * tau
    if causal:
        i = xp.expand_dims(arange(q.shape[-2], like=q), axis=1)  # on q's device, as where requires
        j = xp.expand_dims(arange(k.shape[-2], like=q), axis=0)
        A = xp.where(j > i, xp.full_like(A, -math.inf), A)
    e = xp.exp(A - xp.max(A, axis=-1, keepdims=True))
    P = e / xp.sum(e, axis=-1, keepdims=True)
    return xp.matmul(P, v), (q, k, v, P, tau)


def attention_backward(dout: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """dout (..., Tq, Dv) -> (dq, dk, dv), shaped like q, k, v. YOUR CODE: replace the zeros."""
    q, k, v, P, tau = ctx
    xp = get_array_module(dout)
    return xp.zeros_like(q), xp.zeros_like(k), xp.zeros_like(v)


def cases(rng: Any) -> list[tuple[tuple, dict]]:
    """(args, kwargs) to check: causal self-attention with heads, cross-attention with Tq ≠ Tk, a scale."""
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 2))
    cross = (rng.normal(size=(2, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 3)))
    return [((q, k, v), {"causal": True}), (cross, {}), (cross, {"scale": 0.9})]


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(attention_forward, attention_backward, cases, "attention"))
