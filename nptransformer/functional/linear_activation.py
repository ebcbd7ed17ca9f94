"""A linear layer and the activation after it, as one op: y = act(x W^T + b).

>>> import numpy as np
>>> from nptransformer.functional import linear_activation_forward, linear_activation_backward
>>> x, W, b = np.array([[1.0, -2.0]]), np.eye(2), np.zeros(2)
>>> y, ctx = linear_activation_forward(x, W, b, activation="relu")
>>> y.tolist()
[[1.0, 0.0]]
>>> dx, dW, db = linear_activation_backward(np.ones((1, 2)), ctx)
>>> dx.tolist(), db.tolist()                          # ReLU passes the gradient where h > 0 only
([[1.0, 0.0]], [1.0, 0.0])

The math is the composition of ``linear`` and the activation, and so is the
backward: dh = dy * act'(h), then linear's backward with dh. What the fusion
changes is where the pre-activation h lives. A Transformer's feed-forward
widens each token to 4C: h is the step's widest array, (B*T, 4C). The
separate ops write h to memory and read it straight back. With
:func:`nptransformer.set_num_threads` above 1, each thread multiplies its
slab of rows of x and activates it while that part of h is still in the
cache, and h is never stored whole: only y and what the activation's
backward needs (ReLU's mask, GELU's slope); one thread's product also runs
beside the other's activation. On one thread, with BLAS using its own
threads, the product is one GEMM (BLAS wants it whole) and the activation
runs in cache-sized blocks after it.
Derivation: docs/ops/linear_activation.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import parallel
from ..backend import backend_of, get_array_module
from ..grad_mode import is_grad_enabled
from ._blocks import matmul, rowwise
from .activations import BLOCKS
from .linear import check_linear_inputs, linear_backward
from ..registry import Case, register_op

ACTIVATIONS = tuple(BLOCKS)


def linear_activation_forward(x: Any, weight: Any, bias: Any = None, activation: str = "gelu_tanh") -> tuple[Any, tuple]:
    """y = act(x W^T + b), act one of ``"relu"``, ``"gelu"`` (exact), ``"gelu_tanh"``.

    Shapes: x (..., C_in), weight (C_out, C_in), bias (C_out,) or None ->
    y (..., C_out). Saves x, weight and the activation's saved array (ReLU's
    mask or GELU's slope, (..., C_out)); under :func:`~nptransformer.no_grad`
    only y is computed.
    """
    check_linear_inputs(x, weight, bias)
    if activation not in BLOCKS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    xp = get_array_module(x, weight, bias)
    value, value_and_saved, _ = BLOCKS[activation]
    w_t, c_out = xp.matrix_transpose(weight), weight.shape[0]
    keep = is_grad_enabled()  # read here: the blocks may run on the pool's threads
    act = value_and_saved if keep else value

    def block(rows: Any) -> Any:
        h = rows @ w_t  # (r, C_in) @ (C_in, C_out): one block of the pre-activation, still in cache
        if bias is not None:
            h += bias
        return act(h)

    x2 = xp.reshape(x, (-1, x.shape[-1]))
    if parallel.get_num_threads() > 1 and backend_of(x) == "numpy":
        out = rowwise(block, x2, width=c_out)
    else:
        # On one thread a multithreaded BLAS wants the whole product: blocks of 64 rows made
        # its threads meet once per block, and the step slower. The activation is still blocked.
        out = rowwise(act, matmul(x2, w_t, bias))
    lead = tuple(x.shape[:-1]) + (c_out,)
    if not keep:
        return xp.reshape(out, lead), None
    y, saved = out
    return xp.reshape(y, lead), (x, weight, bias is not None, activation, xp.reshape(saved, lead))


def linear_activation_backward(dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """Gradients of y = act(x W^T + b): returns (dx, dweight, dbias or None).

    dh = dy * act'(h) from the saved mask or slope (docs/ops/activations.md),
    then dx = dh W, dW = dh^T x, db = sum(dh) (docs/ops/linear.md). With
    :func:`nptransformer.set_num_threads` above 1, each thread takes a slab of
    rows and goes through it in blocks: a block's dh goes straight into its
    rows of dx and into the thread's own partial dW and db, so dh, like h in
    the forward, is never stored whole; the partial sums are added at the end.
    """
    if ctx is None:
        raise RuntimeError("linear_activation_backward: the forward ran under no_grad and saved nothing")
    x, weight, has_bias, activation, saved = ctx
    if tuple(dy.shape) != tuple(saved.shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(saved.shape)}, got {tuple(dy.shape)}")
    xp = get_array_module(dy)
    grad = BLOCKS[activation][2]
    dy2, saved2 = xp.reshape(dy, (-1, dy.shape[-1])), xp.reshape(saved, (-1, saved.shape[-1]))
    parts = parallel.slabs(dy2.shape[0], dy2.shape[0] * dy2.shape[1]) if backend_of(dy) == "numpy" else [(0, 1)]
    if len(parts) == 1:
        return linear_backward(rowwise(grad, dy2, saved2), (x, weight, has_bias))
    x2 = xp.reshape(x, (-1, x.shape[-1]))
    dx = np.empty(x2.shape, dtype=dy.dtype)
    rows = max(1, _BACKWARD_BLOCK // dy2.shape[1])
    sums: dict[int, tuple] = {}  # slab start -> that slab's (dW, db)

    def slab(start: int, stop: int) -> None:
        dweight = dbias = None
        for lo in range(start, stop, rows):
            hi = min(lo + rows, stop)
            dh = grad(dy2[lo:hi], saved2[lo:hi])  # (r, C_out), in cache
            np.matmul(dh, weight, out=dx[lo:hi])  # dx = dh W
            dw = dh.T @ x2[lo:hi]  # this block's share of dW = dh^T x (a fresh array, so the sum may take it)
            db = np.sum(dh, axis=0) if has_bias else None  # and of db = sum(dh)
            if dweight is None:
                dweight, dbias = dw, db
            else:
                dweight += dw
                if has_bias:
                    dbias += db
        sums[start] = (dweight, dbias)

    parallel.run(slab, parts)
    dweight, dbias = sums.pop(0)
    for dw, db in sums.values():
        dweight += dw
        if has_bias:
            dbias += db
    return xp.reshape(dx, tuple(x.shape)), dweight, dbias


#: Elements of dh per block of the threaded backward (1 MiB of float32: 256 rows at C_out = 1024).
_BACKWARD_BLOCK = 1 << 18


def _example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 4)), rng.normal(size=5)), {"activation": "gelu"})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=3))
        c_in, c_out = draw(t.sides(1, 5)), draw(t.sides(1, 5))
        activation = draw(t.st.sampled_from(ACTIVATIONS))
        x = draw(t.float_arrays(lead + (c_in,), low=-1.0, high=1.0))
        w = draw(t.float_arrays((c_out, c_in), low=-1.0, high=1.0))
        b = draw(t.st.one_of(t.st.none(), t.float_arrays((c_out,), low=-1.0, high=1.0)))
        return Case((x, w, b), {"activation": activation})

    return cases()


register_op("linear_activation", linear_activation_forward, linear_activation_backward, example=_example,
         cases=_cases, differentiable=(0, 1, 2))
