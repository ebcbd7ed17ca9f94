"""Linear map and batched matrix product.

>>> import numpy as np
>>> from nptransformer.functional import linear_forward, linear_backward
>>> x, W, b = np.ones((2, 3)), np.ones((4, 3)), np.zeros(4)
>>> y, ctx = linear_forward(x, W, b)
>>> y.shape
(2, 4)
>>> dx, dW, db = linear_backward(np.ones((2, 4)), ctx)
>>> dW[0].tolist(), db.tolist()
([2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0])

Derivation: docs/ops/linear.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module
from ..registry import Case, register_op


def linear_forward(x: Any, weight: Any, bias: Any = None) -> tuple[Any, tuple]:
    """y = x W^T + b.

    Shapes: x (..., C_in), weight (C_out, C_in) (PyTorch's layout), bias
    (C_out,) or None -> y (..., C_out). Saves x and weight (the backward's
    two products need them) and whether there was a bias.
    """
    check_linear_inputs(x, weight, bias)
    xp = get_array_module(x, weight, bias)
    x2 = xp.reshape(x, (-1, x.shape[-1]))  # every leading axis folded into rows: (N, C_in)
    y = x2 @ xp.matrix_transpose(weight)  # (N, C_in) @ (C_in, C_out) -> (N, C_out)
    if bias is not None:
        y += bias  # in place: the product is a fresh array (y + b would allocate and fill another)
    return xp.reshape(y, tuple(x.shape[:-1]) + (weight.shape[0],)), (x, weight, bias is not None)


def check_linear_inputs(x: Any, weight: Any, bias: Any) -> None:
    """The checks of :func:`linear_forward`: float arrays of one dtype, weight (C_out, C_in), x (..., C_in), bias (C_out,)."""
    _checks.check_float("x", x)
    _checks.check_float("weight", weight)
    _checks.check_ndim("weight", weight, (2,))
    _checks.check_same_dtype(x=x, weight=weight, bias=bias)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x must have last dimension {weight.shape[1]} (weight is {tuple(weight.shape)}), got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def linear_backward(dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """Gradients of y = x W^T + b: returns (dx, dweight, dbias or None).

    dx = dy W,  dW = dy^T x (summed over all leading axes),  db = sum(dy).
    Shapes: dy (..., C_out) -> dx (..., C_in), dweight (C_out, C_in), dbias (C_out,).
    Derivation: docs/ops/linear.md.
    """
    x, weight, has_bias = ctx
    xp = get_array_module(dy)
    c_out, c_in = weight.shape
    dy2 = xp.reshape(dy, (-1, c_out))  # rows as in the forward: (N, C_out)
    x2 = xp.reshape(x, (-1, c_in))  # (N, C_in)
    dx = dy2 @ weight  # forward: y = x W^T, so dx = dy W; (N, C_out) @ (C_out, C_in) -> (N, C_in)
    dweight = xp.matrix_transpose(dy2) @ x2  # forward: y = x W^T, so dW = dy^T x (a sum over rows); (C_out, C_in)
    dbias = xp.sum(dy2, axis=0) if has_bias else None  # forward: + b on every row, so db = dy summed over rows
    return xp.reshape(dx, tuple(x.shape)), dweight, dbias


def sum_to_shape(g: Any, shape: tuple) -> Any:
    """Undo broadcasting: sum g over the axes that were broadcast to reach g.shape."""
    xp = get_array_module(g)
    extra = g.ndim - len(shape)
    if extra:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def matmul_forward(a: Any, b: Any) -> tuple[Any, tuple]:
    """c = a @ b with batch broadcasting.

    Shapes: a (..., N, K), b (..., K, M) -> c (..., N, M); leading axes
    broadcast as in ``numpy.matmul``. Saves a and b.
    """
    _checks.check_float("a", a)
    _checks.check_float("b", b)
    _checks.check_same_dtype(a=a, b=b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"a and b must have at least 2 dimensions, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"a's last dimension ({a.shape[-1]}) must equal b's second-to-last ({b.shape[-2]})")
    _checks.check_broadcastable("a's batch axes", a.shape[:-2], "b's batch axes", b.shape[:-2])
    return a @ b, (a, b)


def matmul_backward(dc: Any, ctx: tuple) -> tuple[Any, Any]:
    """Gradients of c = a @ b: (da, db) = (dc b^T, a^T dc), summed over broadcast axes.

    Derivation: docs/ops/linear.md."""
    a, b = ctx
    xp = get_array_module(dc)
    da = dc @ xp.matrix_transpose(b)  # forward: c = a @ b, so da = dc b^T; (..., N, M) @ (..., M, K)
    db = xp.matrix_transpose(a) @ dc  # forward: c = a @ b, so db = a^T dc; (..., K, N) @ (..., N, M)
    # forward: a and b were broadcast to a common batch shape, so sum over their copies
    return sum_to_shape(da, tuple(a.shape)), sum_to_shape(db, tuple(b.shape))


def add_forward(a: Any, b: Any) -> tuple[Any, tuple]:
    """c = a + b with broadcasting (residual connections, biases). Saves only the shapes."""
    _checks.check_float("a", a)
    _checks.check_float("b", b)
    _checks.check_same_dtype(a=a, b=b)
    _checks.check_broadcastable("a", a.shape, "b", b.shape)
    return a + b, (tuple(a.shape), tuple(b.shape))


def add_backward(dc: Any, ctx: tuple) -> tuple[Any, Any]:
    """Gradients of c = a + b: dc flows to both, summed over the axes each was broadcast along.

    Derivation: docs/ops/linear.md (broadcasting)."""
    a_shape, b_shape = ctx
    # forward: c = a + b after broadcasting both to c's shape, so each gets dc summed over its copies
    return sum_to_shape(dc, a_shape), sum_to_shape(dc, b_shape)


def _linear_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 4)), rng.normal(size=5)))


def _linear_cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=3))
        c_in, c_out = draw(t.sides(1, 5)), draw(t.sides(1, 5))
        x = draw(t.float_arrays(lead + (c_in,)))
        w = draw(t.float_arrays((c_out, c_in)))
        b = draw(t.st.one_of(t.st.none(), t.float_arrays((c_out,))))
        return Case((x, w, b))

    return cases()


def _matmul_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 1, 3, 4)), rng.normal(size=(3, 4, 2))))


def _matmul_cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        n, k, m = draw(t.sides(1, 4)), draw(t.sides(1, 4)), draw(t.sides(1, 4))
        batch_a, batch_b = draw(t.broadcastable_shapes(max_dims=2))
        return Case((draw(t.float_arrays(batch_a + (n, k))), draw(t.float_arrays(batch_b + (k, m)))))

    return cases()


def _add_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)), rng.normal(size=(1, 4))))


def _add_cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        sa, sb = draw(t.broadcastable_shapes(max_dims=3))
        return Case((draw(t.float_arrays(sa)), draw(t.float_arrays(sb))))

    return cases()


register_op("linear", linear_forward, linear_backward, example=_linear_example, cases=_linear_cases, differentiable=(0, 1, 2))
register_op("matmul", matmul_forward, matmul_backward, example=_matmul_example, cases=_matmul_cases, differentiable=(0, 1))
register_op("add", add_forward, add_backward, example=_add_example, cases=_add_cases, differentiable=(0, 1))
