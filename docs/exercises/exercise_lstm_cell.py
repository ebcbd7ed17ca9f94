"""Exercise 5: the backward of an LSTM cell (PyTorch's gate order i, f, g, o).

Forward, rows of B, input size I, hidden size H; W (4H, I), U (4H, H), b (4H,):

    gates = x Wᵀ + h Uᵀ + b                        (B, 4H), split into four (B, H) blocks
    i = σ(gates_i),  f = σ(gates_f),  g = tanh(gates_g),  o = σ(gates_o)
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')

The cell returns the new state as one array, concat(h', c') (B, 2H), so that the check covers both of the
gradients a cell receives when it runs inside a sequence: dh' from above and from the next step, and dc'
from the next step. Write ``lstm_cell_backward``: given dstate (B, 2H) return (dx, dh, dc, dW, dU, db).
Hints: c' reaches the output twice (directly, and through h'), so dc' gets two terms (rule 2 of
docs/backprop-walkthrough.md); σ' = σ (1 - σ) and tanh' = 1 - tanh²; then gates is a linear map of x and h.

Run ``python docs/exercises/exercise_lstm_cell.py`` to check; the solution is solution_lstm_cell.py.
"""

from __future__ import annotations

import sys
from typing import Any

from nptransformer.backend import get_array_module


def lstm_cell_forward(x: Any, h: Any, c: Any, W: Any, U: Any, b: Any) -> tuple[Any, tuple]:
    """x (B, I), h (B, H), c (B, H), W (4H, I), U (4H, H), b (4H,) -> concat(h', c') (B, 2H)."""
    xp = get_array_module(x)
    H = h.shape[-1]
    gates = xp.matmul(x, xp.matrix_transpose(W)) + xp.matmul(h, xp.matrix_transpose(U)) + b
    i, f, o = (1 / (1 + xp.exp(-gates[:, n * H:(n + 1) * H])) for n in (0, 1, 3))
    g = xp.tanh(gates[:, 2 * H:3 * H])
    c_new = f * c + i * g
    tanh_c = xp.tanh(c_new)
    return xp.concat([o * tanh_c, c_new], axis=-1), (x, h, c, W, U, i, f, g, o, tanh_c)


def lstm_cell_backward(dstate: Any, ctx: tuple) -> tuple[Any, ...]:
    """dstate (B, 2H) -> (dx, dh, dc, dW, dU, db), shaped like the inputs. YOUR CODE: replace the zeros."""
    x, h, c, W, U, i, f, g, o, tanh_c = ctx
    xp = get_array_module(dstate)
    return (xp.zeros_like(x), xp.zeros_like(h), xp.zeros_like(c), xp.zeros_like(W), xp.zeros_like(U),
            xp.zeros_like(W[:, 0]))


def cases(rng: Any) -> list[tuple[tuple, dict]]:
    """(args, kwargs) to check: B = 2, I = 3, H = 2, a nonzero state; and a batch of one."""
    def state(B: int, I: int, H: int) -> tuple:
        return (rng.normal(size=(B, I)), rng.normal(size=(B, H)), rng.normal(size=(B, H)),
                rng.normal(size=(4 * H, I)) * 0.5, rng.normal(size=(4 * H, H)) * 0.5, rng.normal(size=4 * H) * 0.5)

    return [(state(2, 3, 2), {}), (state(1, 2, 3), {})]


if __name__ == "__main__":
    from exercise_check import main

    sys.exit(main(lstm_cell_forward, lstm_cell_backward, cases, "lstm_cell"))
