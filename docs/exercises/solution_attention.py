"""Solution to exercise 4 (exercise_attention.py): the backward of scaled dot-product attention.

Forward: A = q kᵀ · τ (+ mask), P = softmax(A), out = P v. Backward, bottom-up:

    dP = dout vᵀ,          dv = Pᵀ dout                         out = P v
    dA = P ⊙ (dP - Σ_keys dP ⊙ P)                               P = softmax(A); masked entries have P = 0
    dq = dA k · τ,         dk = dAᵀ q · τ                       A = q kᵀ · τ
"""

from __future__ import annotations

import sys
from typing import Any

from exercise_attention import attention_forward, cases

from nptransformer.backend import get_array_module


def attention_backward(dout: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """dout (..., Tq, Dv) -> (dq, dk, dv)."""
    q, k, v, P, tau = ctx
    xp = get_array_module(dout)
    dP = xp.matmul(dout, xp.matrix_transpose(v))  # forward: out = P v
    dv = xp.matmul(xp.matrix_transpose(P), dout)  # forward: out = P v
    dA = P * (dP - xp.sum(dP * P, axis=-1, keepdims=True))  # forward: P = softmax(A)
    dq = xp.matmul(dA, k) * tau  # forward: A = q kᵀ τ
    dk = xp.matmul(xp.matrix_transpose(dA), q) * tau  # forward: A = q kᵀ τ
    return dq, dk, dv


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(attention_forward, attention_backward, cases, "attention (solution)"))
