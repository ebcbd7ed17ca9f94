"""``scaled_dot_product_attention.tiled``: exact attention in O(T) memory (the FlashAttention schedule on NumPy).

The reference stores the (..., Tq, Tk) probabilities for its backward, so a
training step's memory grows with T². This kernel never forms them whole:

- Forward: for each block of queries it walks the key blocks, keeping per
  query a running maximum ``m``, a running sum ``l`` of ``exp(s - m)`` and
  a partial output; when the maximum grows, the sum and the partial output
  are rescaled by ``exp(m_old - m_new)``. After the last key block the
  output is ``acc / l``, exactly the softmax-weighted sum. It saves only q,
  k, v, the output and the per-query log-sum-exp ``lse = m + log l``.
- Backward: each (query block, key block) tile recomputes its
  probabilities ``P = exp(S - lse)``; softmax's ``sum_j dP P`` becomes
  ``rowsum(dout * out)`` (computed once, (..., Tq)), so no row of the
  matrix is needed whole.

Causal tiles wholly above the diagonal are skipped. Dropout regenerates the
reference's keep-mask tile row by tile row from the generator state saved
before the draw (NumPy's PCG64 spends one 64-bit word per uniform and can
jump ahead), so forward, backward and the reference agree on every dropped
weight, and the generator ends where the reference leaves it. Peak memory
beyond q, k, v, out: one (..., block_q, block_k) tile of scores and one
(..., block_q, Tk) keep-mask when dropout is on. docs/ops/tiled_attention.md
derives the online softmax and the backward.

The dispatch runs it on NumPy arrays when Tk >= ``min_keys`` (default
:data:`MIN_KEYS`), where the stored probabilities start to cost more than
recomputing them; below that the blocked kernel keeps its speed.

>>> import numpy as np
>>> from nptransformer.functional import scaled_dot_product_attention_forward
>>> kernel = TiledAttention(block_q=2, block_k=3)
>>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 7, 4))
>>> out, ctx = kernel.forward(q, k, v, is_causal=True)
>>> want, want_ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
>>> bool(np.allclose(out, want, rtol=1e-12, atol=1e-14)), ctx.lse.shape
(True, (2, 7))
>>> bool(np.allclose(ctx.probs, want_ctx.probs, atol=1e-14))   # recomputed on demand, not stored
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from ..backend import dtype_name, get_array_module
from ..functional.attention import attention_cases, check_attention_inputs
from ..functional.dropout import dropout_backward
from ..functional.linear import sum_to_shape
from .dispatch import Kernel, register_kernel

#: Key count from which the dispatch prefers the tiled kernel (measured: docs/long-sequences.md).
MIN_KEYS = 2048
#: Queries and keys per tile: a (B, H, 128, 512) float64 tile is 0.5 MiB per (B, H) pair.
BLOCK_Q, BLOCK_K = 128, 512


@dataclass
class TiledContext:
    """What the tiled backward needs: q, k, v, out, the log-sum-exp per query, and how the scores were built.

    ``lse`` (..., Tq) is -inf for a query whose keys are all masked;
    ``one_hot`` (..., Tq, 1) marks the queries whose softmax is one-hot
    (l = 1: their dS is exactly 0).
    ``dropout_state`` is the generator state before the keep-mask was drawn
    (None without dropout). ``probs`` recomputes the full (..., Tq, Tk)
    probabilities, for attention maps: O(T²), as the reference stores them.
    """

    q: Any
    k: Any
    v: Any
    out: Any
    lse: Any
    one_hot: Any
    attn_mask: Any
    bias: Any
    is_causal: bool
    scale: float
    dropout_p: float
    dropout_state: dict | None
    block_q: int
    block_k: int

    @property
    def probs(self) -> Any:
        """The probabilities before dropout, (..., Tq, Tk), recomputed from the saved log-sum-exp."""
        tq, tk = self.q.shape[-2], self.k.shape[-2]
        return _tile_probs(self, (0, tq), (0, tk))


class TiledAttention(Kernel):
    """Exact attention without the stored probability matrix (module docstring).

    Settings: ``block_q``, ``block_k`` (tile sides, :data:`BLOCK_Q`,
    :data:`BLOCK_K`) and ``min_keys`` (:data:`MIN_KEYS`: the dispatch runs it
    on NumPy arrays with at least that many keys). Arguments, shapes and
    results as :func:`nptransformer.functional.scaled_dot_product_attention_forward`;
    the context (:class:`TiledContext`) offers ``.probs``, recomputed.
    """

    op = "scaled_dot_product_attention"
    name = "scaled_dot_product_attention.tiled"
    defaults = {"block_q": BLOCK_Q, "block_k": BLOCK_K, "min_keys": MIN_KEYS}
    test_settings = {"block_q": 2, "block_k": 2, "min_keys": 1}

    def applies(self, q: Any, k: Any = None, *args: Any, **kwargs: Any) -> bool:
        return isinstance(q, np.ndarray) and k is not None and k.shape[-2] >= self.settings["min_keys"]

    def forward(self, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
                scale: float | None = None, generator: Any = None, bias: Any = None) -> tuple[Any, TiledContext]:
        check_attention_inputs(q, k, v, attn_mask, dropout_p, generator, bias)
        xp = get_array_module(q, k, v, attn_mask, bias)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        tq, tk = q.shape[-2], k.shape[-2]
        dropout_state = _draw_skipped(tuple(q.shape[:-1]) + (tk,), dropout_p, generator)
        ctx = TiledContext(q, k, v, None, None, None, attn_mask, bias, bool(is_causal), scale, float(dropout_p),
                           dropout_state, self.settings["block_q"], self.settings["block_k"])
        outs, lses, one_hots = [], [], []
        dropout_scale = 1.0 / (1.0 - dropout_p)
        for r0, r1 in _blocks(tq, ctx.block_q):
            keep = _keep_rows(ctx, (r0, r1))
            m = l = acc = None
            for c0, c1 in _key_blocks(ctx, (r0, r1)):
                S = _tile_scores(ctx, (r0, r1), (c0, c1))
                m_new = xp.max(S, axis=-1, keepdims=True)
                if m is not None:
                    m_new = xp.maximum(m, m_new)
                # A query with no key seen yet keeps m = -inf; shifting by 0 there gives exp(-inf) = 0, not nan.
                shift = xp.where(xp.isinf(m_new), xp.zeros_like(m_new), m_new)
                p = xp.exp(S - shift)
                # the dropout map with this tile's part of the mask (linear, so its backward is itself)
                w = dropout_backward(p, (None if keep is None else keep[..., c0:c1], dropout_scale))
                part = w @ v[..., c0:c1, :]  # (..., r, c) @ (..., c, Dv)
                if m is None:
                    l, acc = xp.sum(p, axis=-1, keepdims=True), part
                else:
                    alpha = xp.exp(m - shift)  # rescale what was summed under the old maximum (0 if none was)
                    l = l * alpha + xp.sum(p, axis=-1, keepdims=True)
                    acc = acc * alpha + part
                m = m_new
            seen = l > 0
            outs.append(xp.where(seen, acc / xp.where(seen, l, xp.ones_like(l)), xp.zeros_like(acc)))
            lse = xp.where(seen, shift + xp.log(xp.where(seen, l, xp.ones_like(l))), xp.full_like(l, -math.inf))
            lses.append(lse[..., 0])
            one_hots.append(l == 1)  # one key holds all the weight (the others underflow or are masked)
        ctx.out = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)
        ctx.lse = lses[0] if len(lses) == 1 else xp.concat(lses, axis=-1)
        ctx.one_hot = one_hots[0] if len(one_hots) == 1 else xp.concat(one_hots, axis=-2)
        return ctx.out, ctx

    def backward(self, dout: Any, ctx: TiledContext) -> tuple[Any, Any, Any, Any]:
        """dS = P * (dP - rowsum(dout * out)) per tile, P = exp(S - lse) recomputed (docs/ops/tiled_attention.md)."""
        xp = get_array_module(dout)
        q, k, v = ctx.q, ctx.k, ctx.v
        # delta_i = sum_j dP_ij P_ij = dout_i . (sum_j W_ij v_j) = dout_i . out_i: no pass over the keys.
        delta = xp.sum(dout * ctx.out, axis=-1, keepdims=True)
        dq = xp.zeros_like(q)
        dk, dv = xp.zeros_like(k), xp.zeros_like(v)
        dbias = None if ctx.bias is None else backend.zeros(tuple(ctx.bias.shape), like=dout)
        zero = backend.full((), 0.0, like=dout)
        dropout_scale = 1.0 / (1.0 - ctx.dropout_p)
        for r0, r1 in _blocks(q.shape[-2], ctx.block_q):
            keep = _keep_rows(ctx, (r0, r1))
            d = dout[..., r0:r1, :]
            one_hot = ctx.one_hot[..., r0:r1, :]
            for c0, c1 in _key_blocks(ctx, (r0, r1)):
                P = _tile_probs(ctx, (r0, r1), (c0, c1))  # forward: P = softmax(S) = exp(S - lse)
                tile_keep = None if keep is None else keep[..., c0:c1]
                W = dropout_backward(P, (tile_keep, dropout_scale))  # forward: W = dropout(P), rebuilt from P
                dv[..., c0:c1, :] += xp.matrix_transpose(W) @ d  # forward: out = W v, so dv = W^T dout
                dW = d @ xp.matrix_transpose(v[..., c0:c1, :])  # and dW = dout v^T
                dP = dropout_backward(dW, (tile_keep, dropout_scale))  # forward: W = P * keep / (1 - p)
                # forward: P = softmax(S). A one-hot row has dS = 0 exactly; the rowsum form of delta rounds
                # differently from its dP (another BLAS routine), so it is set, not left at 1e-17.
                dS = xp.where(one_hot, zero, P * (dP - delta[..., r0:r1, :]))
                if dbias is not None:  # forward: S + bias
                    part = _part(dbias, (r0, r1), (c0, c1))
                    dbias[part] += sum_to_shape(dS, tuple(dbias[part].shape))
                dq[..., r0:r1, :] += (dS @ k[..., c0:c1, :]) * ctx.scale  # forward: S = q k^T * scale
                dk[..., c0:c1, :] += (xp.matrix_transpose(dS) @ q[..., r0:r1, :]) * ctx.scale
        return dq, dk, dv, dbias

    def cases(self, t: Any) -> Any:
        """The reference's cases up to 7 queries and keys: with 2 x 2 tiles they cross several tiles."""
        return attention_cases(t, max_len=7)


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _key_blocks(ctx: TiledContext, rows: tuple[int, int]) -> list[tuple[int, int]]:
    """The key blocks the query ``rows`` meet: with is_causal, none that starts after the last query."""
    tk = ctx.k.shape[-2]
    blocks = _blocks(tk, ctx.block_k)
    if ctx.is_causal:
        # Keep at least one tile, so that a query with every key masked still gets its zero row.
        blocks = [b for b in blocks if b[0] < rows[1]] or blocks[:1]
    return blocks


def _part(a: Any, rows: tuple[int, int], keys: tuple[int, int]) -> tuple:
    """The index of the part of ``a`` (broadcastable to (..., Tq, Tk)) under one tile; length-1 axes stay whole."""
    index = [slice(None)] * a.ndim
    if a.ndim >= 2 and a.shape[-2] != 1:
        index[-2] = slice(*rows)
    if a.ndim >= 1 and a.shape[-1] != 1:
        index[-1] = slice(*keys)
    return tuple(index)


def _tile_scores(ctx: TiledContext, rows: tuple[int, int], keys: tuple[int, int]) -> Any:
    """S = q k^T * scale + bias + mask on one tile, -inf where a query may not attend."""
    xp = get_array_module(ctx.q)
    (r0, r1), (c0, c1) = rows, keys
    S = (ctx.q[..., r0:r1, :] @ xp.matrix_transpose(ctx.k[..., c0:c1, :])) * ctx.scale
    if ctx.bias is not None:
        S = S + ctx.bias[_part(ctx.bias, rows, keys)]
    mask = ctx.attn_mask
    if mask is not None and dtype_name(mask.dtype) == "bool":
        S = xp.where(mask[_part(mask, rows, keys)], -math.inf, S)
    elif mask is not None:
        S = S + mask[_part(mask, rows, keys)]
    if ctx.is_causal and c1 - 1 > r0:  # a tile wholly below the diagonal has nothing to mask
        i = xp.reshape(backend.arange(r1 - r0, like=ctx.q) + r0, (r1 - r0, 1))
        j = xp.reshape(backend.arange(c1 - c0, like=ctx.q) + c0, (1, c1 - c0))
        S = xp.where(j > i, -math.inf, S)  # the tile's part of causal_mask, without forming the rest
    return S


def _tile_probs(ctx: TiledContext, rows: tuple[int, int], keys: tuple[int, int]) -> Any:
    """P = exp(S - lse) on one tile; 0 for a query whose keys are all masked (its lse is -inf)."""
    xp = get_array_module(ctx.q)
    lse = xp.expand_dims(ctx.lse[..., rows[0]:rows[1]], axis=-1)
    lse = xp.where(xp.isinf(lse), xp.zeros_like(lse), lse)
    return xp.exp(_tile_scores(ctx, rows, keys) - lse)


def _draw_skipped(shape: tuple, p: float, generator: Any) -> dict | None:
    """Advance ``generator`` past the reference's keep-mask draw of ``shape``; return the state before it.

    None when p == 0: the reference draws nothing then.
    """
    if p == 0:
        return None
    generator = backend.default_generator if generator is None else generator
    before = generator.state()
    generator.set_state(_jumped(before, math.prod(shape)))
    return before


def _jumped(state: dict, words: int) -> dict:
    """``state`` advanced by ``words`` 64-bit outputs, as that many uniform doubles would advance it."""
    bits = np.random.PCG64()
    bits.state = state
    bits.advance(words)
    jumped = bits.state
    # advance() drops a buffered 32-bit half-word; drawing doubles keeps it, so the reference does too.
    jumped["has_uint32"], jumped["uinteger"] = state["has_uint32"], state["uinteger"]
    return jumped


def _keep_rows(ctx: TiledContext, rows: tuple[int, int]) -> Any:
    """The reference's keep-mask for the query ``rows`` and every key, (..., r, Tk), or None without dropout.

    The reference drew the whole (..., Tq, Tk) mask in C order with one call; the
    rows of one leading index are a contiguous run of it, regenerated from there.
    """
    if ctx.dropout_state is None:
        return None
    xp = get_array_module(ctx.q)
    lead, tq, tk = tuple(ctx.q.shape[:-2]), ctx.q.shape[-2], ctx.k.shape[-2]
    (r0, r1), gen = rows, backend.Generator()
    parts = []
    for i in range(math.prod(lead)):
        gen.set_state(_jumped(ctx.dropout_state, i * tq * tk + r0 * tk))
        parts.append(gen.bernoulli(((r1 - r0) * tk,), 1.0 - ctx.dropout_p, like=ctx.q))
    return xp.reshape(xp.stack(parts), lead + (r1 - r0, tk))


register_kernel(TiledAttention())
