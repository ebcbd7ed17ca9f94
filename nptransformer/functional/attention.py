"""Scaled dot-product attention: softmax(q k^T * scale + mask) v, with dropout on the weights.

Mask convention (one for all of nptransformer, that of ``torch.nn.MultiheadAttention``):
a BOOLEAN ``attn_mask`` is True where a query is NOT allowed to attend. This is
the opposite of ``torch.nn.functional.scaled_dot_product_attention``, whose
boolean mask is True where attention IS allowed; invert the mask (``~mask``)
when moving code from that function. A FLOAT ``attn_mask`` is added to the
scores (use -inf to forbid a position).

>>> import numpy as np
>>> from nptransformer.functional import scaled_dot_product_attention_forward
>>> q = k = np.zeros((1, 2, 4))                       # (B, T, D): all scores equal
>>> v = np.array([[[1.0], [3.0]]])                    # (B, T, Dv)
>>> out, ctx = scaled_dot_product_attention_forward(q, k, v)
>>> out[0, :, 0].tolist()                             # the mean of v
[2.0, 2.0]
>>> out, ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
>>> out[0, :, 0].tolist(), ctx.probs[0].tolist()     # query 0 sees key 0 only
([1.0, 2.0], [[1.0, 0.0], [0.5, 0.5]])

Derivation: docs/ops/attention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import dtype_name, get_array_module
from ._blocks import stacked_matmul
from .dropout import dropout_backward, dropout_forward
from ..registry import Case, register_op
from .softmax import softmax_backward, softmax_forward


@dataclass
class AttentionBlock:
    """One block of query rows ``rows`` (start, stop) against the keys ``[0, keys)``.

    ``probs`` (..., stop - start, keys) are its attention probabilities before
    dropout; ``softmax_ctx`` and ``dropout_ctx`` the contexts of its softmax
    and dropout, handed back to their backwards (softmax's holds the same
    ``probs`` array, dropout's the boolean keep-mask).
    """

    rows: tuple[int, int]
    keys: int
    probs: Any
    softmax_ctx: tuple
    dropout_ctx: tuple


@dataclass
class AttentionContext:
    """What the attention backward needs: q, k, v, the scale and the blocks of probabilities.

    Without a causal mask there is one block, every query against every key.
    With ``is_causal`` and at least 2 * CAUSAL_BLOCK queries (256), the queries come
    in blocks and each block only meets the keys up to its last query: the
    keys after it are masked for every query of the block, so their scores,
    probabilities and gradients are never computed (see
    :func:`scaled_dot_product_attention_forward`).
    """

    q: Any
    k: Any
    v: Any
    blocks: list
    scale: float

    @property
    def probs(self) -> Any:
        """The attention probabilities before dropout, (..., Tq, Tk); zeros where a block skipped the keys."""
        if len(self.blocks) == 1:
            return self.blocks[0].probs
        full = backend.zeros(tuple(self.q.shape[:-1]) + (self.k.shape[-2],), like=self.q)
        for b in self.blocks:
            full[..., b.rows[0]:b.rows[1], :b.keys] = b.probs
        return full


#: Query rows per block of a causal attention (at least; at most 8 blocks). Measured on the bench's
#: GPT (B*T = 2048, 4 heads of 64, two threads), forward + backward of one layer: at T = 256, two
#: blocks 8.3 ms against 10.4 whole; at T = 1024, eight blocks 24 ms against 42. At T = 128,
#: blocks of 32 or 64 cost more calls than the skipped quarter of the scores saved, so shorter
#: sequences stay whole. The tests lower it to reach the blocked code with small T.
CAUSAL_BLOCK = 128


def _blocks_for(tq: int, tk: int, is_causal: bool) -> list[tuple[tuple[int, int], int]]:
    """[((start, stop), keys), ...]: query blocks and the keys each one meets."""
    if not is_causal or tq < 2 * CAUSAL_BLOCK:
        return [((0, tq), tk)]
    rows = max(CAUSAL_BLOCK, -(-tq // 8))
    # The last block meets every key (those after Tq, if Tk > Tq, are masked for all queries):
    # its dk and dv then have k's full shape.
    return [((r, min(r + rows, tq)), min(r + rows, tk) if r + rows < tq else tk) for r in range(0, tq, rows)]


def _mask_block(mask: Any, rows: tuple[int, int], keys: int) -> Any:
    """The part of a mask broadcastable to (..., Tq, Tk) that covers the block's rows and first keys."""
    if mask is None:
        return None
    index = [slice(None)] * mask.ndim
    if mask.ndim >= 2 and mask.shape[-2] != 1:
        index[-2] = slice(*rows)
    if mask.ndim >= 1 and mask.shape[-1] != 1:
        index[-1] = slice(0, keys)
    return mask[tuple(index)]


def _check_inputs(q: Any, k: Any, v: Any, attn_mask: Any) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        _checks.check_float(name, a)
        if a.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., T, D), got shape {tuple(a.shape)}")
    _checks.check_same_dtype(q=q, k=k, v=v)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"q, k and v must have the same leading (batch, head) axes, got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k must have last dimension {q.shape[-1]} (q's head dim D), got shape {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"v must have {k.shape[-2]} rows (k's key count Tk), got shape {tuple(v.shape)}")
    if attn_mask is None:
        return
    _checks.check_array("attn_mask", attn_mask)
    mask_dtype = dtype_name(attn_mask.dtype)
    if mask_dtype not in ("bool", dtype_name(q.dtype)):
        raise TypeError(
            f"attn_mask must be bool (True = masked out) or {dtype_name(q.dtype)} (added to the scores, like q), "
            f"got dtype {mask_dtype}"
        )
    scores_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
    try:
        ok = np.broadcast_shapes(tuple(attn_mask.shape), scores_shape) == scores_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the attention scores' "
            f"shape (..., Tq, Tk) = {scores_shape}"
        )


def _causal_mask(rows: tuple[int, int], tk: int, like: Any) -> Any:
    """(stop - start, Tk) boolean for queries start..stop-1, True where key j > query i (top-left aligned, as in torch)."""
    xp = get_array_module(like)
    i = xp.reshape(backend.arange(rows[1], like=like)[rows[0]:], (rows[1] - rows[0], 1))
    j = xp.reshape(backend.arange(tk, like=like), (1, tk))
    return j > i


def scaled_dot_product_attention_forward(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    generator: Any = None,
) -> tuple[Any, AttentionContext]:
    """out = dropout(softmax(q k^T * scale + mask)) v.

    Shapes: q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> out (..., Tq, Dv);
    the leading axes (B, H) of q, k and v must be equal.

    - ``attn_mask`` broadcastable to (..., Tq, Tk): bool with True = NOT allowed
      to attend (torch.nn.MultiheadAttention's convention, the opposite of
      torch.nn.functional.scaled_dot_product_attention's), or float of q's dtype
      added to the scores (-inf allowed).
    - ``is_causal``: query i may not attend to key j > i (top-left aligned).
      Unlike torch, it may be combined with ``attn_mask``: both apply.
    - ``scale``: defaults to 1/sqrt(D).
    - ``dropout_p``: inverted dropout on the attention probabilities, drawn
      from ``generator`` (default ``backend.default_generator``); nothing is
      drawn when it is 0.

    A query whose keys are all masked gets an all-zero output row (not nan)
    and passes no gradient. Saves q, k, v, the probabilities, the dropout mask
    and the scale in an :class:`AttentionContext`.
    """
    _check_inputs(q, k, v, attn_mask)
    _checks.check_probability("dropout_p", dropout_p)
    xp = get_array_module(q, k, v, attn_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    blocks, outs = [], []
    for rows, keys in _blocks_for(q.shape[-2], k.shape[-2], is_causal):
        block, out = _attend(xp, q[..., rows[0]:rows[1], :], k[..., :keys, :], v[..., :keys, :],
                             _mask_block(attn_mask, rows, keys), rows, is_causal, scale, dropout_p, generator)
        blocks.append(block)
        outs.append(out)
    out = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)
    return out, AttentionContext(q, k, v, blocks, scale)


def _attend(xp: Any, q: Any, k: Any, v: Any, attn_mask: Any, rows: tuple[int, int], is_causal: bool, scale: float,
            dropout_p: float, generator: Any) -> tuple[AttentionBlock, Any]:
    """One block of queries (..., r, D) against keys and values (..., keys, D): its probabilities and output."""
    scores = stacked_matmul(q, xp.matrix_transpose(k))  # (..., r, D) @ (..., D, keys) -> (..., r, keys)
    scores *= scale  # in place: the scores are the largest array here, so no second copy
    masked = None
    if attn_mask is not None and dtype_name(attn_mask.dtype) == "bool":
        masked = attn_mask
    elif attn_mask is not None:
        scores += attn_mask
    if is_causal:
        causal = _causal_mask(rows, k.shape[-2], like=q)
        masked = causal if masked is None else (masked | causal)
    if masked is not None:
        # -inf added where masked, in place; the mask is (r, keys) or broadcasts, so this is small
        scores += xp.where(masked, backend.full((), -math.inf, scores.dtype, like=scores),
                           backend.full((), 0.0, scores.dtype, like=scores))
    probs, softmax_ctx = softmax_forward(scores, axis=-1)  # all -inf rows -> zeros
    weights, dropout_ctx = dropout_forward(probs, p=dropout_p, generator=generator)  # draws nothing when p == 0
    out = stacked_matmul(weights, v)  # (..., r, keys) @ (..., keys, Dv) -> (..., r, Dv)
    return AttentionBlock(rows, k.shape[-2], probs, softmax_ctx, dropout_ctx), out


def scaled_dot_product_attention_backward(dout: Any, ctx: AttentionContext) -> tuple[Any, Any, Any]:
    """Gradients (dq, dk, dv) of out = W v, W = dropout(P), P = softmax(S), S = q k^T * scale + mask:

        dv = W^T dout,   dW = dout v^T,   dP = dW * keep / (1 - p),
        dS = P * (dP - sum_j dP * P)  (softmax backward),
        dq = dS k * scale,   dk = dS^T q * scale.

    The mask is a constant, so it has no gradient; masked entries have P = 0,
    hence dS = 0 there, and a fully masked query row passes no gradient at all.
    Computed block by block (:class:`AttentionContext`): a block of queries
    adds into the gradients of the keys and values it met.
    Derivation: docs/ops/attention.md.
    """
    xp = get_array_module(dout)
    dq_parts = []
    dk = dv = None
    for b in reversed(ctx.blocks):  # the last block meets every key: its dk, dv start the sums
        start, stop = b.rows
        q, k, v, d = ctx.q[..., start:stop, :], ctx.k[..., :b.keys, :], ctx.v[..., :b.keys, :], dout[..., start:stop, :]
        # Dropout is a diagonal linear map (P -> P * keep / (1-p)), so its backward applied
        # to P rebuilds W from the saved mask instead of saving W as well.
        weights = dropout_backward(b.probs, b.dropout_ctx)
        dv_b = stacked_matmul(xp.matrix_transpose(weights), d)  # forward: out = W v, so dv = W^T dout  (..., keys, Dv)
        dweights = stacked_matmul(d, xp.matrix_transpose(v))  # and dW = dout v^T  (..., r, keys)
        dprobs = dropout_backward(dweights, b.dropout_ctx)  # forward: W = P * keep / (1-p)
        dscores = softmax_backward(dprobs, b.softmax_ctx)  # forward: P = softmax(S)
        dq_b = stacked_matmul(dscores, k)  # forward: S = q k^T * scale, so dq = dS k * scale  (..., r, D)
        dq_b *= ctx.scale
        dk_b = stacked_matmul(xp.matrix_transpose(dscores), q)  # and dk = dS^T q * scale  (..., keys, D)
        dk_b *= ctx.scale
        dq_parts.insert(0, dq_b)
        if dk is None:
            dk, dv = dk_b, dv_b
        else:
            dk[..., :b.keys, :] += dk_b
            dv[..., :b.keys, :] += dv_b
    dq = dq_parts[0] if len(dq_parts) == 1 else xp.concat(dq_parts, axis=-2)
    return dq, dk, dv


def _example(rng: Any) -> Case:
    q, k, v = rng.normal(size=(2, 2, 3, 4)), rng.normal(size=(2, 2, 4, 4)), rng.normal(size=(2, 2, 4, 3))
    mask = rng.random(size=(3, 4)) < 0.3
    mask[1] = True  # one fully masked query row
    return Case((q, k, v, mask), {"dropout_p": 0.5, "is_causal": True})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=2))  # (), (B,) or (B, H)
        tq, tk = draw(t.sides(1, 5)), draw(t.sides(1, 5))
        d, dv = draw(t.sides(1, 4)), draw(t.sides(1, 4))
        # |scores| <= D * scale stays small: a saturated softmax has gradients near the
        # finite-difference noise floor (~1e-10), which would make relative errors meaningless.
        q = draw(t.float_arrays(lead + (tq, d), low=-1.0, high=1.0))
        k = draw(t.float_arrays(lead + (tk, d), low=-1.0, high=1.0))
        v = draw(t.float_arrays(lead + (tk, dv)))
        # The mask covers a broadcastable suffix of (..., Tq, Tk); Tq -> 1 is a key-padding mask.
        full = lead + (tq, tk)
        start = draw(t.st.integers(0, len(full) - 1))
        mask_shape = tuple(1 if draw(t.st.booleans()) else n for n in full[start:])
        kind = draw(t.st.sampled_from(["none", "bool", "float"]))
        mask = None
        if kind != "none":
            mask = draw(t.bool_masks(mask_shape))  # includes all-True, i.e. fully masked rows
        if kind == "float":
            mask = np.where(mask, -np.inf, draw(t.float_arrays(mask_shape)))
        kwargs = {
            "dropout_p": draw(t.st.sampled_from([0.0, 0.5])),
            "is_causal": draw(t.st.booleans()),
            "scale": draw(t.st.one_of(t.st.none(), t.st.floats(0.25, 1.0))),
        }
        return Case((q, k, v, mask), kwargs)

    return cases()


register_op(
    "scaled_dot_product_attention",
    scaled_dot_product_attention_forward,
    scaled_dot_product_attention_backward,
    example=_example,
    cases=_cases,
    differentiable=(0, 1, 2),
)
