"""``scaled_dot_product_attention.blocked``: causal attention in blocks of queries, on serial or pooled products.

Two things make NumPy attention fast on a CPU, and this kernel does both:

- Causal attention in blocks of consecutive queries ``r0 <= i < r1``: every
  key ``j >= r1`` is masked for the whole block, so its scores,
  probabilities and gradients are zero and never computed. Each block
  multiplies its queries by the keys ``k[:r1]`` it can see; the backward
  adds each block's share into dk and dv (docs/ops/attention.md derives it).
- The many small (..., T, D) products go through
  :func:`._gemm.stacked_matmul`: each on one BLAS thread, or with the pool
  running, the stack of them split along the batch axis.

The dropout mask is drawn once for the whole (..., Tq, Tk) matrix, as the
reference draws it, so both give the same output from the same generator
state; a block reads its part of the mask.

>>> import numpy as np
>>> from nptransformer.functional import scaled_dot_product_attention_forward
>>> kernel = BlockedAttention(causal_block=1)         # blocks of one query, so that T = 4 is cut
>>> kernel.blocks_for(4, 4, is_causal=True)           # ((first query, last + 1), keys it meets)
[((0, 1), 1), ((1, 2), 2), ((2, 3), 3), ((3, 4), 4)]
>>> q = k = v = np.random.default_rng(0).normal(size=(2, 4, 8))
>>> out, ctx = kernel.forward(q, k, v, is_causal=True)
>>> want, want_ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
>>> bool(np.allclose(out, want, rtol=1e-12, atol=1e-14)), bool(np.allclose(ctx.probs, want_ctx.probs, atol=1e-15))
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, parallel
from ..backend import dtype_name, get_array_module
from ..functional.attention import attention_cases, causal_mask, check_attention_inputs
from ..functional.dropout import dropout_backward, keep_mask
from ..functional.linear import sum_to_shape
from . import ops
from ._gemm import SERIAL_PRODUCT, stacked_matmul
from .dispatch import Kernel, register_kernel

#: Query rows per block of a causal attention (at least; at most 8 blocks), from 2 * CAUSAL_BLOCK
#: queries on. Measured on the bench's GPT (B*T = 2048, 4 heads of 64, two threads), forward +
#: backward of one layer: at T = 256, two blocks 8.3 ms against 10.4 whole; at T = 1024, eight
#: blocks 24 ms against 42. At T = 128, blocks of 32 or 64 cost more calls than the skipped
#: quarter of the scores saved, so shorter sequences stay whole.
CAUSAL_BLOCK = 128


@dataclass
class _Block:
    """Queries ``rows`` = (start, stop) against the keys ``[0, keys)``: their probabilities
    (..., stop - start, keys) before dropout and the softmax's context."""

    rows: tuple[int, int]
    keys: int
    probs: Any
    softmax_ctx: Any


@dataclass
class BlockedContext:
    """What the blocked backward needs: q, k, v, the scale, the blocks, the dropout mask
    (..., Tq, Tk) or None and its scale 1/(1-p), and the bias's shape (None without one)."""

    q: Any
    k: Any
    v: Any
    scale: float
    blocks: list
    keep: Any
    dropout_scale: float
    bias_shape: tuple | None

    @property
    def probs(self) -> Any:
        """The attention probabilities before dropout, (..., Tq, Tk); zeros where a block skipped the keys."""
        if len(self.blocks) == 1:
            return self.blocks[0].probs
        full = backend.zeros(tuple(self.q.shape[:-1]) + (self.k.shape[-2],), like=self.q)
        for b in self.blocks:
            full[..., b.rows[0]:b.rows[1], :b.keys] = b.probs
        return full


#: Below this many attention scores (B * H * T_q * T_k) the reference runs: the blocks and the pool
#: cost more than they save there (measured with 2 threads: (4, 12, 40, 40) took 2.6 ms in the
#: kernel against 1.7 in the reference, (32, 12, 40, 40) 13.2 against 13.6), and a decoding step,
#: one query against the cache, is far below it.
REFERENCE_BELOW = 1 << 18


class BlockedAttention(Kernel):
    """Attention with causal query blocks and serial or pooled stacked products (module docstring).

    Applies to NumPy arrays with at least ``reference_below`` scores
    (:data:`REFERENCE_BELOW`). Settings: ``causal_block`` (:data:`CAUSAL_BLOCK`),
    and :func:`._gemm.stacked_matmul`'s ``serial_product`` and ``min_elements``.
    Arguments, shapes and results as
    :func:`nptransformer.functional.scaled_dot_product_attention_forward`;
    the context (:class:`BlockedContext`) offers ``.probs`` as the reference's does.
    """

    op = "scaled_dot_product_attention"
    name = "scaled_dot_product_attention.blocked"
    defaults = {"causal_block": CAUSAL_BLOCK, "serial_product": SERIAL_PRODUCT, "min_elements": parallel.MIN_ELEMENTS,
                "reference_below": REFERENCE_BELOW}
    test_settings = {"causal_block": 1, "serial_product": 16, "min_elements": 1, "reference_below": 0}

    def applies(self, q: Any, k: Any = None, *args: Any, **kwargs: Any) -> bool:
        if not isinstance(q, np.ndarray) or getattr(k, "ndim", 0) < 2:
            return False
        return math.prod(q.shape[:-1]) * k.shape[-2] >= self.settings["reference_below"]

    def blocks_for(self, tq: int, tk: int, is_causal: bool) -> list[tuple[tuple[int, int], int]]:
        """[((start, stop), keys), ...]: the query blocks and the keys each one meets."""
        block = self.settings["causal_block"]
        if not is_causal or tq < 2 * block:
            return [((0, tq), tk)]
        rows = max(block, -(-tq // 8))
        # The last block meets every key (those after Tq, if Tk > Tq, are masked for all queries):
        # its dk and dv then have k's full shape.
        return [((r, min(r + rows, tq)), min(r + rows, tk) if r + rows < tq else tk) for r in range(0, tq, rows)]

    def _product(self, a: Any, b: Any) -> Any:
        return stacked_matmul(a, b, self.settings["serial_product"], self.settings["min_elements"])

    def forward(self, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
                scale: float | None = None, generator: Any = None, bias: Any = None) -> tuple[Any, BlockedContext]:
        check_attention_inputs(q, k, v, attn_mask, dropout_p, generator, bias)
        xp = get_array_module(q, k, v, attn_mask, bias)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        tq, tk = q.shape[-2], k.shape[-2]
        keep = keep_mask(tuple(q.shape[:-1]) + (tk,), dropout_p, generator, like=q)  # the reference's draw
        dropout_scale = 1.0 / (1.0 - dropout_p)
        bool_mask = attn_mask is not None and dtype_name(attn_mask.dtype) == "bool"
        causal = causal_mask(tq, tk, like=q) if is_causal else None
        minus_inf = backend.full((), -math.inf, like=q)
        blocks, outs = [], []
        for rows, keys in self.blocks_for(tq, tk, is_causal):
            r0, r1 = rows
            S = self._product(q[..., r0:r1, :], xp.matrix_transpose(k[..., :keys, :]))  # (..., r, keys)
            S *= scale  # in place: the scores are the largest array here, so no second copy
            if bias is not None:
                S += bias[_part(bias, rows, keys)]
            masked = attn_mask[_part(attn_mask, rows, keys)] if bool_mask else None
            if attn_mask is not None and not bool_mask:
                S += attn_mask[_part(attn_mask, rows, keys)]
            if causal is not None:
                masked = causal[r0:r1, :keys] if masked is None else (masked | causal[r0:r1, :keys])
            if masked is not None:  # set, not added: a masked score that is inf or NaN still becomes -inf
                if isinstance(S, np.ndarray):
                    np.copyto(S, -math.inf, where=masked)  # the mask is (r, keys) or broadcasts: small
                else:
                    S = xp.where(masked, minus_inf, S)
            P, softmax_ctx = ops.softmax_forward(S, axis=-1)
            W = dropout_backward(P, (None if keep is None else keep[..., r0:r1, :keys], dropout_scale))
            outs.append(self._product(W, v[..., :keys, :]))  # (..., r, keys) @ (..., keys, Dv)
            blocks.append(_Block(rows, keys, P, softmax_ctx))
        out = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)
        bias_shape = None if bias is None else tuple(bias.shape)
        return out, BlockedContext(q, k, v, scale, blocks, keep, dropout_scale, bias_shape)

    def backward(self, dout: Any, ctx: BlockedContext) -> tuple[Any, Any, Any, Any]:
        xp = get_array_module(dout)
        dq_parts, dk, dv = [], None, None
        dbias = None if ctx.bias_shape is None else backend.zeros(ctx.bias_shape, like=dout)
        for b in reversed(ctx.blocks):  # the last block meets every key: its dk, dv start the sums
            (r0, r1), keys = b.rows, b.keys
            q, k, v, d = ctx.q[..., r0:r1, :], ctx.k[..., :keys, :], ctx.v[..., :keys, :], dout[..., r0:r1, :]
            keep = None if ctx.keep is None else ctx.keep[..., r0:r1, :keys]
            W = dropout_backward(b.probs, (keep, ctx.dropout_scale))
            dv_b = self._product(xp.matrix_transpose(W), d)  # dv = W^T dout  (..., keys, Dv)
            dW = self._product(d, xp.matrix_transpose(v))  # dW = dout v^T  (..., r, keys)
            dS = ops.softmax_backward(dropout_backward(dW, (keep, ctx.dropout_scale)), b.softmax_ctx)
            if dbias is not None:  # blocks in a fixed order: the same sums on every run
                part = _part(dbias, b.rows, keys)
                dbias[part] += sum_to_shape(dS, tuple(dbias[part].shape))
            dq_b = self._product(dS, k)  # dq = dS k * scale  (..., r, D)
            dq_b *= ctx.scale
            dk_b = self._product(xp.matrix_transpose(dS), q)  # dk = dS^T q * scale  (..., keys, D)
            dk_b *= ctx.scale
            dq_parts.insert(0, dq_b)
            if dk is None:
                dk, dv = dk_b, dv_b
            else:
                dk[..., :keys, :] += dk_b
                dv[..., :keys, :] += dv_b
        dq = dq_parts[0] if len(dq_parts) == 1 else xp.concat(dq_parts, axis=-2)
        return dq, dk, dv, dbias

    def cases(self, t: Any) -> Any:
        """The reference's cases, mostly causal, up to 7 queries: with ``causal_block=1`` they come in blocks."""
        return attention_cases(t, max_len=7, causal=t.st.sampled_from([True, True, True, False]))


def _part(a: Any, rows: tuple[int, int], keys: int) -> tuple:
    """The index of the part of ``a`` (broadcastable to (..., Tq, Tk)) that covers the query ``rows``
    and the first ``keys`` keys; an axis of length 1 is broadcast, so it is kept whole."""
    index = [slice(None)] * a.ndim
    if a.ndim >= 2 and a.shape[-2] != 1:
        index[-2] = slice(*rows)
    if a.ndim >= 1 and a.shape[-1] != 1:
        index[-1] = slice(0, keys)
    return tuple(index)


register_kernel(BlockedAttention())
