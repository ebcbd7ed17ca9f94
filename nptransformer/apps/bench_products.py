"""The training step's weight products alone, raced against PyTorch's: how much of the gap is the BLAS.

A training step multiplies by every linear map's weight three times:
the forward's y = x W^T, and the backward's dx = dy W and dW = dy^T x.
Those products are most of the step's FLOPs, and each library hands them
to its own BLAS (NumPy's wheel: OpenBLAS; PyTorch's: MKL on x86). This
module times the same products, of the same shapes, in both, so that the
bench can split each step time into *products* and *the rest* (norms,
attention, activations, optimizer, glue): the first measures the BLAS and
how the products are split over threads, the second the library itself.

The shapes are read off one real step (:func:`linear_shapes`), so they
follow whatever model the bench builds. No bias, activation or attention
product is included: only the weight products.

>>> import numpy as np
>>> y, dx, dw = ours_once(np.ones((4, 3)), np.ones((2, 3)), np.ones((4, 2)))
>>> y.shape, dx.shape, dw.shape, float(dw[0, 0])
((4, 2), (4, 3), (2, 3), 4.0)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .. import backend
from ..kernels import dispatch
from ..kernels.ops import linear_backward, linear_forward

#: The ops whose weight products are counted: the linear map, and the feed-forward's product fused with its
#: activation (the activation itself is not counted).
LINEAR_OPS = ("linear", "linear_activation")


def linear_shapes(step: Callable[[], Any]) -> list[tuple[int, int, int]]:
    """(rows, c_in, c_out) of every linear map the forward pass of one call of ``step`` runs, in call order.

    rows = the input's leading axes multiplied out (B * T); a weight of
    shape (c_out, c_in). The step runs once, normally (its optimizer steps).
    Forward calls after the first backward (activation checkpointing's
    recomputation) are not counted: each linear map counts once.
    """
    shapes: list[tuple[int, int, int]] = []
    in_backward: list[bool] = []

    def recorded(forward: Callable, op: str, *args: Any, **kwargs: Any) -> Any:
        if op in LINEAR_OPS and not in_backward:
            x, weight = args[0], args[1]
            shapes.append((math.prod(x.shape[:-1]), int(x.shape[-1]), int(weight.shape[0])))
        return forward(op, *args, **kwargs)

    def backward_seen(backward: Callable, dout: Any, ctx: Any) -> Any:
        in_backward.append(True)
        return backward(dout, ctx)

    with dispatch.intercepted(recorded, backward_seen):
        step()
    return shapes


def _operands(shapes: list[tuple[int, int, int]], dtype: str, seed: int) -> dict:
    """One (x (M, K), weight (N, K), dy (M, N)) host triple per distinct shape, normal entries."""
    rng = np.random.default_rng(seed)
    return {s: tuple(rng.standard_normal(shape).astype(dtype) for shape in ((s[0], s[1]), (s[2], s[1]), (s[0], s[2])))
            for s in dict.fromkeys(shapes)}


def ours_once(x: Any, weight: Any, dy: Any) -> tuple[Any, Any, Any]:
    """y = x W^T, dx = dy W, dW = dy^T x through nptransformer's linear op (its kernel when one applies):
    x (M, K), weight (N, K), dy (M, N) -> y (M, N), dx (M, K), dW (N, K)."""
    y, ctx = linear_forward(x, weight)
    dx, dweight, _ = linear_backward(dy, ctx)
    return y, dx, dweight


def torch_once(x: Any, weight: Any, dy: Any) -> tuple[Any, Any, Any]:
    """The same three products as PyTorch computes them for ``F.linear`` without a bias: the forward's
    ``x @ W.t()``, and autograd's ``dy @ W`` and ``(x.t() @ dy).t()``; torch tensors in and out."""
    import torch

    with torch.no_grad():
        return torch.nn.functional.linear(x, weight), torch.mm(dy, weight), torch.mm(x.t(), dy).t()


def products_step(shapes: list[tuple[int, int, int]], racer: str, dtype: str = "float32",
                  seed: int = 0) -> Callable[[], None]:
    """A closure computing every shape's three products once: ``racer`` "ours" (on the current backend,
    :func:`ours_once`) or "torch" (:func:`torch_once`). Operands are made once, one set per distinct shape."""
    operands = _operands(shapes, dtype, seed)
    if racer == "torch":
        import torch

        once, ready = torch_once, {s: tuple(torch.from_numpy(a) for a in arrays) for s, arrays in operands.items()}
    elif racer == "ours":
        once, ready = ours_once, {s: tuple(backend.asarray(a) for a in arrays) for s, arrays in operands.items()}
    else:
        raise ValueError(f"racer must be 'ours' or 'torch', got {racer!r}")

    def run() -> None:
        for s in shapes:
            once(*ready[s])

    return run
