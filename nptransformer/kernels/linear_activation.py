"""``linear_activation.fused``: the feed-forward's widening product and its activation, y written over h.

A Transformer's feed-forward widens each token to 4C: h = x W^T + b is the
widest activation inside a block, (B*T, 4C). The reference computes h, then
y = act(h) as a fresh array, then what the backward needs. This kernel
computes y and what the backward needs (ReLU's mask, GELU's slope) together,
in cache-sized row blocks (:func:`._rows.rowwise`), writing y over the block
of h it has just read: no second (B*T, 4C) array for y.

With :func:`nptransformer.set_num_threads` above 1, the product and the
activation are pipelined (:func:`nptransformer.parallel.pipeline`): h is
computed in slabs of rows, the worker multiplying the next slab while the
calling thread activates the last one, so one thread runs BLAS while the
other runs NumPy's elementwise passes (two threads both running short
elementwise passes wait on each other for the interpreter lock). On the
bench's GPT (2048 x 256 -> 1024, two threads) a forward took 6.4 ms against
7.0 with the product split over both threads and then the activation split
over both; the training step 257.0 against 262.2 ms (alternating steps in
one process). On one thread the product is one GEMM (BLAS's own threads)
and the activation follows in blocks.

Computing h a block of 64 rows at a time inside each thread, so that the
activation found the block in the cache, was slower still: the (64, C) @
(C, 4C) products ran at two thirds of the whole product's rate.

The backward computes dh = dy * act'(h) in blocks, and when the work is
split each thread walks its slab in blocks of rows, each block's dh going
straight into its rows of dx and into the slab's partial dW and db; the
slabs' partials are summed in slab order.

>>> import numpy as np
>>> from nptransformer.functional import linear_activation_forward
>>> kernel = FusedLinearActivation()
>>> rng = np.random.default_rng(0)
>>> x, W, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(8, 4)), rng.normal(size=8)
>>> y, ctx = kernel.forward(x, W, b, activation="gelu_tanh")
>>> bool(np.allclose(y, linear_activation_forward(x, W, b, activation="gelu_tanh")[0], rtol=1e-14, atol=1e-15))
True
>>> [g.shape for g in kernel.backward(np.ones(y.shape), ctx)]
[(2, 3, 4), (8, 4), (8,)]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import parallel
from ..backend import backend_of, get_array_module
from ..functional.linear_activation import check_linear_activation_inputs
from ..grad_mode import is_grad_enabled
from .. import _checks
from ._gemm import matmul
from ._rows import RowKernel, rowwise
from .activations import ACTIVATION_BLOCKS, ACTIVATION_SETTINGS, ACTIVATION_TEST_SETTINGS, takes_kernel
from .dispatch import register_kernel
from .linear import pooled_linear_backward

#: Elements of dh per block of the threaded backward (1 MiB of float32: 256 rows at C_out = 1024).
BACKWARD_BLOCK = 1 << 18
#: Elements of h per slab of the threaded forward's pipeline (512 rows at C_out = 1024: 4 slabs at B*T = 2048).
PIPELINE_BLOCK = 1 << 19


class FusedLinearActivation(RowKernel):
    """y = act(x W^T + b): h activated in row blocks, y written over h; product and activation pipelined.

    Applies to every CuPy call (the activation runs whole, as
    :data:`.activations.ACTIVATION_BLOCKS`' bodies) and to NumPy calls whose h (B*T, C_out) is large enough for
    :func:`.activations.takes_kernel`. Shapes as :func:`nptransformer.functional.linear_activation_forward`;
    saves x, weight and the activation's saved array (ReLU's mask or GELU's
    slope, (..., C_out)); under :func:`~nptransformer.no_grad` only y is
    computed and the context is None. Settings: ``block_elements``,
    ``whole_elements``, ``pooled_block_elements``, ``min_elements`` of
    :func:`._rows.rowwise` (the activation's blocks and slabs over h; the
    pipeline runs from ``min_elements`` entries of h), the thresholds of
    :data:`.activations.ACTIVATION_SETTINGS`, ``pipeline_block``, the
    entries of h per slab of the threaded forward, and ``backward_block``,
    the elements of dh per block of the threaded backward.
    """

    op = "linear_activation"
    name = "linear_activation.fused"
    defaults = {**ACTIVATION_SETTINGS, "backward_block": BACKWARD_BLOCK, "pipeline_block": PIPELINE_BLOCK}
    test_settings = {**ACTIVATION_TEST_SETTINGS, "backward_block": 8, "pipeline_block": 8}

    def applies(self, x: Any, weight: Any, bias: Any = None, activation: str = "gelu_tanh") -> bool:
        if not (_checks.is_array(x) and _checks.is_array(weight)) or weight.ndim != 2 or x.ndim == 0:
            return False
        h_elements = x.size // max(x.shape[-1], 1) * weight.shape[0]  # the activation runs over h
        return takes_kernel(x, h_elements, activation, self.settings)

    def forward(self, x: Any, weight: Any, bias: Any = None, activation: str = "gelu_tanh") -> tuple[Any, Any]:
        check_linear_activation_inputs(x, weight, bias, activation)
        xp = get_array_module(x, weight, bias)
        value, value_and_saved, _ = ACTIVATION_BLOCKS[activation]
        x2, w_t = xp.reshape(x, (-1, x.shape[-1])), xp.matrix_transpose(weight)
        lead = tuple(x.shape[:-1]) + (weight.shape[0],)
        keep = is_grad_enabled()  # read here: the blocks may run on the pool's threads
        pipelined = parallel.get_num_threads() > 1 and backend_of(x) == "numpy"
        if pipelined:
            h = np.empty((x2.shape[0], weight.shape[0]), dtype=np.result_type(x2.dtype, weight.dtype))
        else:
            h = matmul(x2, w_t, bias)  # (B*T, C_out); BLAS's own threads, if any
        # What the backward needs: ReLU's mask (array_api_strict takes only its own bool) or GELU's slope.
        mask_dtype = getattr(xp, "bool", np.bool_)
        saved = xp.empty(h.shape, dtype=mask_dtype if activation == "relu" else h.dtype, device=h.device) if keep \
            else None
        # The activation writes y over h, a block of rows at a time (each block is read before it is written).
        act, out = (value_and_saved, (h, saved)) if keep else (value, h)
        if pipelined:
            self._pipelined(act, x2, w_t, bias, h, saved)
        else:
            rowwise(act, h, settings=self.settings, out=out)
        if not keep:
            return xp.reshape(h, lead), None
        return xp.reshape(h, lead), (x, weight, bias is not None, activation, xp.reshape(saved, lead))

    def _pipelined(self, act: Any, x2: Any, w_t: Any, bias: Any, h: Any, saved: Any) -> None:
        """h = x2 w_t + bias, then act over h (y into h, the slope or mask into saved), slab by slab, the products
        on the pool's workers while this thread runs the activation (:func:`nptransformer.parallel.pipeline`)."""
        R, c_out = h.shape
        rows = max(1, self.settings["pipeline_block"] // c_out)
        parts = [(lo, min(lo + rows, R)) for lo in range(0, R, rows)] if R * c_out >= self.settings["min_elements"] \
            else [(0, R)]
        sub = max(1, self.settings["block_elements"] // c_out)  # the activation's blocks, in cache

        def produce(lo: int, hi: int) -> None:
            np.matmul(x2[lo:hi], w_t, out=h[lo:hi])
            if bias is not None:
                h[lo:hi] += bias

        def consume(lo: int, hi: int) -> None:
            for a in range(lo, hi, sub):
                b = min(a + sub, hi)
                act(h[a:b], out=h[a:b] if saved is None else (h[a:b], saved[a:b]))

        parallel.pipeline(produce, consume, parts)

    def backward(self, dy: Any, ctx: Any) -> tuple[Any, Any, Any]:
        if ctx is None:
            raise RuntimeError("linear_activation_backward: the forward ran under no_grad and saved nothing")
        x, weight, has_bias, activation, saved = ctx
        if tuple(dy.shape) != tuple(saved.shape):
            raise ValueError(f"dy must have the forward output's shape {tuple(saved.shape)}, got {tuple(dy.shape)}")
        xp = get_array_module(dy)
        grad = ACTIVATION_BLOCKS[activation][2]
        dy2, saved2 = xp.reshape(dy, (-1, dy.shape[-1])), xp.reshape(saved, (-1, saved.shape[-1]))
        rows_total, c_out = dy2.shape
        parts = (parallel.slabs(rows_total, rows_total * c_out, self.settings["min_elements"])
                 if backend_of(dy) == "numpy" else [(0, rows_total)])
        if len(parts) == 1:
            dh = rowwise(grad, dy2, saved2, settings=self.settings)
            return pooled_linear_backward(dh, x, weight, has_bias, self.settings["min_elements"])
        x2 = xp.reshape(x, (-1, x.shape[-1]))
        dx = np.empty(x2.shape, dtype=dy.dtype)
        rows = max(1, self.settings["backward_block"] // c_out)

        def slab(start: int, stop: int) -> tuple[Any, Any]:
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
            return dweight, dbias

        partials = parallel.gather(slab, parts)
        dweight, dbias = partials[0]
        for dw, db in partials[1:]:  # slab order: the same sum whichever thread finished first
            dweight += dw
            if has_bias:
                dbias += db
        return xp.reshape(dx, tuple(x.shape)), dweight, dbias


register_kernel(FusedLinearActivation())
