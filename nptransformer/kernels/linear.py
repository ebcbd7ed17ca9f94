"""``linear.pooled``: the linear map's three products split over the pool's threads.

The reference folds every leading axis into rows and computes y = x W^T + b
as one GEMM; so does this kernel (a stacked (B, T, C_in) @ (C_in, C_out)
would be B smaller GEMMs), but through :func:`._gemm.matmul`, which with
:func:`nptransformer.set_num_threads` above 1 cuts each product into a slab
per thread: by rows, by columns, or, for the weight gradient
(C_out, B*T) @ (B*T, C_in), along the long inner axis B*T, the slabs'
partial products summed in slab order. The bias gradient is a column sum
(:func:`._rows.column_sums`).

>>> import numpy as np
>>> from nptransformer import parallel
>>> kernel = PooledLinear()
>>> x, W = np.ones((64, 3)), np.ones((1024, 3))
>>> kernel.applies(x, W), parallel.get_num_threads()      # one thread: the reference runs
(False, 1)
>>> y, ctx = kernel.forward(x, W, np.zeros(1024))
>>> dx, dW, db = kernel.backward(np.ones((64, 1024)), ctx)
>>> float(y[0, 0]), float(dx[0, 0]), float(dW[0, 0]), float(db[0])
(3.0, 1024.0, 64.0, 64.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import parallel
from ..backend import backend_of, get_array_module
from ..functional.linear import check_linear_inputs
from ._gemm import matmul
from ._rows import column_sums
from .dispatch import Kernel, register_kernel


class PooledLinear(Kernel):
    """y = x W^T + b with each GEMM of the forward and backward split over the pool's threads.

    Applies to NumPy arrays while :func:`nptransformer.set_num_threads` is
    above 1 and y has at least ``min_elements`` elements (below that, waking
    the workers costs more than they save). Shapes and context as
    :func:`nptransformer.functional.linear_forward`.
    """

    op = "linear"
    name = "linear.pooled"
    defaults = {"min_elements": parallel.MIN_ELEMENTS}
    test_settings = {"min_elements": 1}

    def applies(self, x: Any, weight: Any, bias: Any = None) -> bool:
        if not (isinstance(x, np.ndarray) and isinstance(weight, np.ndarray) and x.ndim >= 1 and weight.ndim == 2):
            return False  # not NumPy, or not a linear map's shapes: the reference runs (and raises)
        outputs = math.prod(x.shape[:-1]) * weight.shape[0]
        return parallel.get_num_threads() > 1 and outputs >= self.settings["min_elements"]

    def forward(self, x: Any, weight: Any, bias: Any = None) -> tuple[Any, tuple]:
        check_linear_inputs(x, weight, bias)
        xp = get_array_module(x, weight, bias)
        y = matmul(xp.reshape(x, (-1, x.shape[-1])), xp.matrix_transpose(weight), bias, self.settings["min_elements"])
        return xp.reshape(y, tuple(x.shape[:-1]) + (weight.shape[0],)), (x, weight, bias is not None)

    def backward(self, dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
        x, weight, has_bias = ctx
        return pooled_linear_backward(dy, x, weight, has_bias, self.settings["min_elements"])


def pooled_linear_backward(dy: Any, x: Any, weight: Any, has_bias: bool,
                           min_elements: int = parallel.MIN_ELEMENTS) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias or None) of y = x W^T + b: dx and dbias on this thread, dweight on a worker.

    Shapes: dy (..., C_out), x (..., C_in), weight (C_out, C_in) -> dx
    (..., C_in), dweight (C_out, C_in), dbias (C_out,). Also the backward
    of ``linear_activation.fused`` once its dh is computed whole.

    dx = dy W and dW = dy^T x take the same multiply-adds (B*T * C_out *
    C_in), so with the pool running they are computed at once, each whole on
    its own thread: one handoff to a worker instead of one per product, and
    no partial weight gradients to sum. Measured on the bench's GPT (two
    threads): the backwards of its 13 linears, each timed alone, 55.2 ms in
    all against 57.0 with each product split in two; the training step 0.988
    of the split version's time (alternating steps). Small products, and one thread, run
    them in turn through :func:`._gemm.matmul`.
    """
    xp = get_array_module(dy)
    c_out, c_in = weight.shape
    dy2, x2 = xp.reshape(dy, (-1, c_out)), xp.reshape(x, (-1, c_in))
    results: dict[str, Any] = {}
    if backend_of(dy) == "numpy" and len(parallel.slabs(2, dy2.shape[0] * c_out, min_elements)) == 2:
        def product(which: str) -> None:
            if which == "dweight":
                results["dweight"] = xp.matrix_transpose(dy2) @ x2
            else:
                results["dx"] = dy2 @ weight
                results["dbias"] = column_sums(dy2) if has_bias else None  # while the worker multiplies

        parallel.run(product, [("dx",), ("dweight",)])
    else:
        results["dx"] = matmul(dy2, weight, min_elements=min_elements)  # dx = dy W
        results["dweight"] = matmul(xp.matrix_transpose(dy2), x2, min_elements=min_elements)  # dW = dy^T x
        results["dbias"] = column_sums(dy2) if has_bias else None
    return xp.reshape(results["dx"], tuple(x.shape)), results["dweight"], results["dbias"]


register_kernel(PooledLinear())
