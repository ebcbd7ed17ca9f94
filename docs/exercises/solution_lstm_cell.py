"""Solution to exercise 5 (exercise_lstm_cell.py): the backward of an LSTM cell.

With dh' and dc'_out the two halves of dstate, bottom-up:

    dc'     = dc'_out + dh' ⊙ o ⊙ (1 - tanh²(c'))        c' feeds the output and h' (rule 2: add)
    do      = dh' ⊙ tanh(c')                            h' = o ⊙ tanh(c')
    df, dc  = dc' ⊙ c,  dc' ⊙ f                          c' = f ⊙ c + i ⊙ g
    di, dg  = dc' ⊙ g,  dc' ⊙ i
    dgates  = concat(di ⊙ i(1 - i), df ⊙ f(1 - f), dg ⊙ (1 - g²), do ⊙ o(1 - o))
    dx = dgates W,  dh = dgates U,  dW = dgatesᵀ x,  dU = dgatesᵀ h,  db = Σ_rows dgates
"""

from __future__ import annotations

import sys
from typing import Any

from exercise_lstm_cell import cases, lstm_cell_forward

from nptransformer.backend import get_array_module


def lstm_cell_backward(dstate: Any, ctx: tuple) -> tuple[Any, ...]:
    """dstate (B, 2H) -> (dx, dh, dc, dW, dU, db)."""
    x, h, c, W, U, i, f, g, o, tanh_c = ctx
    xp = get_array_module(dstate)
    H = h.shape[-1]
    dh_new, dc_new = dstate[:, :H], dstate[:, H:]  # forward: state = concat(h', c')
    dc_new = dc_new + dh_new * o * (1 - tanh_c * tanh_c)  # forward: h' = o tanh(c'), c' used twice
    do = dh_new * tanh_c  # forward: h' = o tanh(c')
    df, dc, di, dg = dc_new * c, dc_new * f, dc_new * g, dc_new * i  # forward: c' = f c + i g
    dgates = xp.concat([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)],
                       axis=-1)  # forward: i, f, o = σ(gates), g = tanh(gates)
    dx = xp.matmul(dgates, W)  # forward: gates = x Wᵀ + h Uᵀ + b
    dh = xp.matmul(dgates, U)
    dW = xp.matmul(xp.matrix_transpose(dgates), x)
    dU = xp.matmul(xp.matrix_transpose(dgates), h)
    db = xp.sum(dgates, axis=0)
    return dx, dh, dc, dW, dU, db


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(lstm_cell_forward, lstm_cell_backward, cases, "lstm_cell (solution)"))
