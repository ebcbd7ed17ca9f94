"""One step of an LSTM or a GRU: the cells every recurrent layer unrolls over time.

Both follow torch.nn's equations and gate order, so torch weights load as
they are. The weights stack the gates along their first axis:
``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih``/``bias_hh``
(G*H,), G = 4 for the LSTM (gates i, f, g, o) and 3 for the GRU (r, z, n).

The LSTM state is the pair (h, c) stacked on a new leading axis, state
(2, B, H), so that each cell is a map state -> state with one input and one
output gradient: backpropagation through time then passes one array from
step to step (docs/ops/recurrent.md).

>>> import numpy as np
>>> from nptransformer.functional import gru_cell_forward, gru_cell_backward
>>> rng = np.random.default_rng(0)
>>> x, h = rng.normal(size=(2, 3)), rng.normal(size=(2, 4))
>>> w_ih, w_hh = rng.normal(size=(12, 3)), rng.normal(size=(12, 4))
>>> h_new, ctx = gru_cell_forward(x, h, w_ih, w_hh)
>>> dx, dh, dw_ih, dw_hh, db_ih, db_hh = gru_cell_backward(np.ones_like(h_new), ctx)
>>> h_new.shape, dx.shape, dw_hh.shape, db_ih
((2, 4), (2, 3), (12, 4), None)

Derivation of the backward passes: docs/ops/recurrent.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _checks
from ..backend import get_array_module
from ..registry import Case, register_op


def sigmoid(x: Any) -> Any:
    """1 / (1 + e^-x), computed from e^-|x| so that no exponent overflows. Shapes: x (...) -> (same)."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_cell(x: Any, h: Any, weight_ih: Any, weight_hh: Any, bias_ih: Any, bias_hh: Any, gates: int,
                state_name: str) -> None:
    """The cells' argument checks; errors name the arguments as the op's signature does (x, ``state_name``, ...)."""
    for name, a in (("x", x), (state_name, h), ("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        _checks.check_float(name, a)
    _checks.check_same_dtype(x=x, **{state_name: h}, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                             bias_hh=bias_hh)
    _checks.check_ndim("x", x, (2,))
    H = h.shape[-1]
    if tuple(weight_hh.shape) != (gates * H, H):
        raise ValueError(f"weight_hh must have shape ({gates * H}, {H}) for hidden size {H}, "
                         f"got {tuple(weight_hh.shape)}")
    if tuple(weight_ih.shape) != (gates * H, x.shape[-1]):
        raise ValueError(f"weight_ih must have shape ({gates * H}, {x.shape[-1]}) (gates x hidden, input size), "
                         f"got {tuple(weight_ih.shape)}")
    if h.shape[-2] != x.shape[0]:
        raise ValueError(f"{state_name} has batch size {h.shape[-2]} but x has {x.shape[0]}")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and tuple(b.shape) != (gates * H,):
            raise ValueError(f"{name} must have shape ({gates * H},), got {tuple(b.shape)}")


def _affine(x: Any, w: Any, b: Any) -> Any:
    y = x @ get_array_module(x).matrix_transpose(w)
    return y if b is None else y + b


def _affine_backward(dy: Any, x: Any, w: Any, has_bias: bool) -> tuple[Any, Any, Any]:
    """(dx, dw, db) of y = x w^T + b: dy w, dy^T x, sum over the batch."""
    xp = get_array_module(dy)
    db = xp.sum(dy, axis=0) if has_bias else None
    return dy @ w, xp.matrix_transpose(dy) @ x, db


def lstm_cell_forward(x: Any, state: Any, weight_ih: Any, weight_hh: Any, bias_ih: Any = None,
                      bias_hh: Any = None) -> tuple[Any, tuple]:
    """One LSTM step, torch's equations. Shapes: x (B, I), state (2, B, H) = stack(h, c) -> (2, B, H).

        i, f, g, o = split(x W_ih^T + b_ih + h W_hh^T + b_hh)   # gate order i, f, g, o
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    Saves the inputs, the four activated gates, c and tanh(c').
    """
    _check_cell(x, state, weight_ih, weight_hh, bias_ih, bias_hh, gates=4, state_name="state")
    if state.ndim != 3 or state.shape[0] != 2:
        raise ValueError(f"state must have shape (2, B, H) (h and c stacked), got {tuple(state.shape)}")
    xp = get_array_module(x)
    h, c = state[0, ...], state[1, ...]
    H = h.shape[-1]
    a = _affine(x, weight_ih, bias_ih) + _affine(h, weight_hh, bias_hh)  # (B, 4H) pre-activations
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
    g, o = xp.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
    c_new = f * c + i * g
    tc = xp.tanh(c_new)
    h_new = o * tc
    return xp.stack([h_new, c_new]), (x, h, c, weight_ih, weight_hh, bias_ih is not None, bias_hh is not None,
                                      i, f, g, o, tc)


def lstm_cell_backward(dstate: Any, ctx: tuple) -> tuple[Any, Any, Any, Any, Any, Any]:
    """(dx, dstate, dweight_ih, dweight_hh, dbias_ih, dbias_hh) of one LSTM step.

    With dh', dc' = dstate[0], dstate[1] and dc = dc' + dh' o (1 - tanh^2 c'):
    do = dh' tanh c', di = dc g, df = dc c, dg = dc i, dc_prev = dc f; each
    gate's pre-activation gradient is its gradient times the activation's
    derivative (s (1 - s) for a sigmoid, 1 - t^2 for tanh), and the affine
    maps give the rest. Derivation: docs/ops/recurrent.md.
    """
    x, h, c, weight_ih, weight_hh, has_bih, has_bhh, i, f, g, o, tc = ctx
    xp = get_array_module(dstate)
    dh_new, dc_new = dstate[0, ...], dstate[1, ...]
    do = dh_new * tc  # forward: h' = o * tanh(c')
    dc = dc_new + dh_new * o * (1.0 - tc * tc)  # forward: h' = o * tanh(c'), c' also an output
    di, df, dg, dc_prev = dc * g, dc * c, dc * i, dc * f  # forward: c' = f * c + i * g
    da = xp.concat([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g), do * o * (1.0 - o)], axis=-1)
    dx, dw_ih, db_ih = _affine_backward(da, x, weight_ih, has_bih)  # forward: a = x W_ih^T + b_ih + ...
    dh, dw_hh, db_hh = _affine_backward(da, h, weight_hh, has_bhh)  # forward: a = ... + h W_hh^T + b_hh
    return dx, xp.stack([dh, dc_prev]), dw_ih, dw_hh, db_ih, db_hh


def gru_cell_forward(x: Any, h: Any, weight_ih: Any, weight_hh: Any, bias_ih: Any = None,
                     bias_hh: Any = None) -> tuple[Any, tuple]:
    """One GRU step, torch's equations. Shapes: x (B, I), h (B, H) -> h' (B, H).

        a_r, a_z, a_n = split(x W_ih^T + b_ih)                  # gate order r, z, n
        u_r, u_z, u_n = split(h W_hh^T + b_hh)
        r = sigmoid(a_r + u_r),  z = sigmoid(a_z + u_z)
        n = tanh(a_n + r * u_n)                                 # r gates the recurrent part only
        h' = (1 - z) * n + z * h

    Saves the inputs, r, z, n and u_n.
    """
    _check_cell(x, h, weight_ih, weight_hh, bias_ih, bias_hh, gates=3, state_name="h")
    _checks.check_ndim("h", h, (2,))
    xp = get_array_module(x)
    H = h.shape[-1]
    a = _affine(x, weight_ih, bias_ih)  # (B, 3H)
    u = _affine(h, weight_hh, bias_hh)  # (B, 3H)
    r = sigmoid(a[:, :H] + u[:, :H])
    z = sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
    u_n = u[:, 2 * H:]
    n = xp.tanh(a[:, 2 * H:] + r * u_n)
    h_new = (1.0 - z) * n + z * h
    return h_new, (x, h, weight_ih, weight_hh, bias_ih is not None, bias_hh is not None, r, z, n, u_n)


def gru_cell_backward(dh_new: Any, ctx: tuple) -> tuple[Any, Any, Any, Any, Any, Any]:
    """(dx, dh, dweight_ih, dweight_hh, dbias_ih, dbias_hh) of one GRU step.

    dn = dh' (1 - z), dz = dh' (h - n), dh gets dh' z directly; through
    n = tanh(a_n + r u_n): dp = dn (1 - n^2) reaches a_n, dp r reaches u_n
    and dr = dp u_n; the sigmoids multiply by s (1 - s). Derivation:
    docs/ops/recurrent.md.
    """
    x, h, weight_ih, weight_hh, has_bih, has_bhh, r, z, n, u_n = ctx
    xp = get_array_module(dh_new)
    dn, dz, dh_direct = dh_new * (1.0 - z), dh_new * (h - n), dh_new * z  # forward: h' = (1 - z) n + z h
    dp = dn * (1.0 - n * n)  # forward: n = tanh(a_n + r * u_n)
    dr = dp * u_n
    dr_pre, dz_pre = dr * r * (1.0 - r), dz * z * (1.0 - z)  # forward: r, z = sigmoid(a + u)
    da = xp.concat([dr_pre, dz_pre, dp], axis=-1)  # forward: a = x W_ih^T + b_ih
    du = xp.concat([dr_pre, dz_pre, dp * r], axis=-1)  # forward: u = h W_hh^T + b_hh
    dx, dw_ih, db_ih = _affine_backward(da, x, weight_ih, has_bih)
    dh, dw_hh, db_hh = _affine_backward(du, h, weight_hh, has_bhh)
    return dx, dh_direct + dh, dw_ih, dw_hh, db_ih, db_hh


def _case(gates: int, stacked: bool) -> Any:
    def make(rng: Any, B: int, I: int, H: int, bias: bool) -> Case:
        state = rng.uniform(-1.5, 1.5, size=(2, B, H) if stacked else (B, H))
        b = [rng.uniform(-1, 1, size=(gates * H,)) for _ in range(2)] if bias else [None, None]
        return Case((rng.uniform(-2, 2, size=(B, I)), state, rng.uniform(-1, 1, size=(gates * H, I)),
                     rng.uniform(-1, 1, size=(gates * H, H)), *b))

    return make


def _example(gates: int, stacked: bool) -> Any:
    return lambda rng: _case(gates, stacked)(rng, 2, 3, 4, True)


def _cases(gates: int, stacked: bool) -> Any:
    def cases(t: Any) -> Any:
        def make(seed: int, B: int, I: int, H: int, bias: bool) -> Case:
            return _case(gates, stacked)(np.random.default_rng(seed), B, I, H, bias)

        return t.st.builds(make, t.seeds(), t.sides(1, 3), t.sides(1, 4), t.sides(1, 4), t.st.booleans())

    return cases


register_op("lstm_cell", lstm_cell_forward, lstm_cell_backward, example=_example(4, True), cases=_cases(4, True),
            differentiable=(0, 1, 2, 3, 4, 5))
register_op("gru_cell", gru_cell_forward, gru_cell_backward, example=_example(3, False), cases=_cases(3, False),
            differentiable=(0, 1, 2, 3, 4, 5))
