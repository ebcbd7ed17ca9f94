"""A linear layer and the activation after it, as one op: y = act(h), h = x W^T + b.

>>> import numpy as np
>>> from nptransformer.functional import linear_activation_forward, linear_activation_backward
>>> x, W, b = np.array([[1.0, -2.0]]), np.eye(2), np.zeros(2)
>>> y, ctx = linear_activation_forward(x, W, b, activation="relu")
>>> y.tolist()
[[1.0, 0.0]]
>>> dx, dW, db = linear_activation_backward(np.ones((1, 2)), ctx)
>>> dx.tolist(), db.tolist()                          # ReLU passes the gradient where h > 0 only
([[1.0, 0.0]], [1.0, 0.0])

The op is the composition of :func:`~.linear.linear_forward` and the
activation (:mod:`.activations`), and its backward the composition of their
backwards in reverse order. It is one op so that an engine may fuse the two:
a Transformer's feed-forward widens each token to 4C, and the fused kernel
(``linear_activation.fused`` in :mod:`nptransformer.kernels.linear_activation`)
never stores the pre-activation h whole. Here h is computed and kept like
any other array.
Derivation: docs/ops/linear_activation.md.
"""

from __future__ import annotations

from typing import Any

from .activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from .linear import check_linear_inputs, linear_backward, linear_forward
from ..registry import Case, register_op

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def linear_activation_forward(x: Any, weight: Any, bias: Any = None, activation: str = "gelu_tanh") -> tuple[Any, tuple]:
    """y = act(x W^T + b), act one of ``"relu"``, ``"gelu"`` (exact), ``"gelu_tanh"``.

    Shapes: x (..., C_in), weight (C_out, C_in), bias (C_out,) or None ->
    y (..., C_out). Saves what its two parts save: linear's x and weight,
    and the activation's context (ReLU's mask, GELU's input h, (..., C_out)).
    """
    check_linear_activation_inputs(x, weight, bias, activation)
    h, linear_ctx = linear_forward(x, weight, bias)  # h = x W^T + b: (..., C_out)
    if activation == "relu":
        y, act_ctx = relu_forward(h)
    else:
        y, act_ctx = gelu_forward(h, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y, (linear_ctx, activation, act_ctx, tuple(h.shape))


def check_linear_activation_inputs(x: Any, weight: Any, bias: Any, activation: Any) -> None:
    """The checks of :func:`linear_activation_forward`: :func:`~.linear.check_linear_inputs`, and a known activation."""
    check_linear_inputs(x, weight, bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def linear_activation_backward(dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """Gradients of y = act(x W^T + b): returns (dx, dweight, dbias or None).

    dh = dy * act'(h) (docs/ops/activations.md), then dx = dh W,
    dW = dh^T x, db = sum(dh) (docs/ops/linear.md). Shapes: dy (..., C_out)
    -> dx (..., C_in), dweight (C_out, C_in), dbias (C_out,).
    Derivation: docs/ops/linear_activation.md.
    """
    linear_ctx, activation, act_ctx, shape = ctx
    if tuple(dy.shape) != shape:
        raise ValueError(f"dy must have the forward output's shape {shape}, got {tuple(dy.shape)}")
    act_backward = relu_backward if activation == "relu" else gelu_backward
    dh = act_backward(dy, act_ctx)  # forward: y = act(h), so dh = dy * act'(h)
    return linear_backward(dh, linear_ctx)  # forward: h = x W^T + b, so dx = dh W, dW = dh^T x, db = sum(dh)


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
