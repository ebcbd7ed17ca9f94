"""``GroupedQueryAttention``: self-attention with shared key/value heads and position-aware scores.

The variants a reader meets after the 2017 attention, each an option:

- **grouped-query / multi-query attention** (Ainslie et al., 2023; Shazeer,
  2019): H query heads but only ``num_kv_heads`` key and value heads, each
  shared by a group of G = H / num_kv_heads query heads. The projections and
  the KV cache shrink by H / num_kv_heads; with num_kv_heads == H this is
  :class:`~nptransformer.nn.MultiheadAttention`'s self-attention exactly
  (same parameters, same numbers); num_kv_heads == 1 is multi-query attention.
- **rotary positions** (``position="rotary"``, Su et al.): q and k rotated by
  their absolute positions, so q_i . k_j depends on i - j only (the op
  ``rope``, docs/ops/positional.md);
- **ALiBi** (``position="alibi"``): -m_h |i - j| added to the scores, a
  constant (:mod:`nptransformer.functional.alibi`);
- **T5 buckets** (``position="relative"``): a learned bias per head and
  bucket of j - i (:class:`~nptransformer.nn.RelativePositionBias`; causal
  buckets unless ``bidirectional``), one table per attention module.

Forward, for query heads h and their key/value head g(h) = h // G:

    [q | k | v] = x W_in^T + b_in                       # (B, L, (H + 2 H_kv) D)
    q, k = rope(q), rope(k)                             # position="rotary"
    o_h = softmax(q_h k_g(h)^T / sqrt(D) + bias + mask) v_g(h)
    y = merge(o) W_o^T + b_o

Backward: the gradient of a shared k (or v) head is the sum over the G query
heads that read it; rope's backward rotates back by minus the angle.
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..functional.alibi import alibi_bias
from ..grad_mode import is_grad_enabled
from ..kernels import ops
from ..registry import ModuleCheck, register_module_check
from . import init
from .attention_masks import attention_masks, causal_bottom_right, combine
from .linear import Linear
from .module import Module, Parameter
from .relative_position import RelativePositionBias

POSITIONS = (None, "rotary", "alibi", "relative")


class GroupedQueryAttention(Module):
    """Self-attention x (B, L, E) -> (B, L, E) with ``num_kv_heads`` key/value heads and a position scheme.

    Parameters as :class:`~nptransformer.nn.MultiheadAttention`'s:
    ``in_proj_weight`` ((H + 2 H_kv) D, E) (rows: W_q, W_k, W_v),
    ``in_proj_bias``, ``out_proj``; plus ``relative_attention_bias`` with
    ``position="relative"``. ``rotary_base``: rope's base.
    ``num_buckets``, ``max_distance``, ``bidirectional``: the relative bias's.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, dropout: float = 0.0,
                 bias: bool = True, position: str | None = None, rotary_base: float = 10000.0,
                 num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = False,
                 dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_positive_int("embed_dim", embed_dim)
        _checks.check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _checks.check_positive_int("num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        _checks.check_probability("dropout", dropout)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        if position == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got embed_dim / num_heads = {self.head_dim}")
        self.dropout, self.generator, self.position, self.rotary_base = dropout, generator, position, rotary_base
        rows = (num_heads + 2 * num_kv_heads) * self.head_dim
        self.in_proj_weight = Parameter(backend.zeros((rows, embed_dim), dtype=dtype))
        init.xavier_uniform_(self.in_proj_weight, generator=generator)
        self.in_proj_bias = Parameter(backend.zeros((rows,), dtype=dtype)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype, generator=generator)
        if bias:
            self.out_proj.bias.data = backend.zeros((embed_dim,), dtype=dtype)
        if position == "relative":
            self.relative_attention_bias = RelativePositionBias(num_buckets, num_heads, bidirectional, max_distance,
                                                                dtype=dtype, generator=generator)
        self.attn_weights = None

    def forward(self, x: Any, attn_mask: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                need_weights: bool = False, attn_bias: Any = None, cache: Any = None) -> Any:
        """The same as :meth:`self_attention`."""
        return self.self_attention(x, attn_mask, key_padding_mask, is_causal, need_weights, attn_bias, cache)

    def self_attention(self, x: Any, attn_mask: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                       need_weights: bool = False, attn_bias: Any = None, cache: Any = None) -> Any:
        """x (B, L, E) -> (B, L, E), with :meth:`MultiheadAttention.self_attention`'s arguments and masks.

        ``cache`` (an AttentionCache, inside ``no_grad``) holds the H_kv key
        and value heads of earlier positions (rotated, with rotary): the
        queries are the last L of S positions. ``attn_bias`` (broadcastable
        to (B, H, L, S)) is refused with ``position="relative"``, which adds
        its own; ``backward`` returns dx[, dattn_bias].
        """
        _checks.check_float("x", x)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (B, T, {self.embed_dim}), got {tuple(x.shape)}")
        _checks.check_last_dim("x", x, self.embed_dim, "embed_dim")
        _checks.check_same_dtype(in_proj_weight=self.in_proj_weight.data, x=x)
        if attn_bias is not None and self.position == "relative":
            raise ValueError("attn_bias cannot be combined with position='relative' (it adds its own bias)")
        if cache is not None and is_grad_enabled():
            raise RuntimeError("GroupedQueryAttention: cache= is for inference; call it inside nptransformer.no_grad()")
        B, L = x.shape[0], x.shape[1]
        xp = get_array_module(x)
        E, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        y, proj = ops.linear_forward(x, self.in_proj_weight.data,
                                     None if self.in_proj_bias is None else self.in_proj_bias.data)
        q = self._heads(y[:, :, :E], self.num_heads)  # (B, H, L, D)
        k = self._heads(y[:, :, E:E + kv], self.num_kv_heads)  # (B, H_kv, L, D)
        v = self._heads(y[:, :, E + kv:], self.num_kv_heads)
        offset = 0 if cache is None else cache.length
        rope = None
        if self.position == "rotary":
            q, rope_q = ops.rope_forward(q, offset=offset, base=self.rotary_base)
            k, rope_k = ops.rope_forward(k, offset=offset, base=self.rotary_base)
            rope = (rope_q, rope_k)
        masks = []
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H_kv, S, D): the cache holds the shared heads only
            if is_causal:  # the queries are the last L of S positions (one query sees every key)
                masks, is_causal = ([causal_bottom_right(L, k.shape[2], like=x)] if L > 1 else []), False
        S = k.shape[2]
        masks = attention_masks(attn_mask, key_padding_mask, B, self.num_heads, L, S, x.dtype) + masks
        if self.position == "alibi":
            masks.append(alibi_bias(x, self.num_heads, L, S, offset=offset))  # a constant: added like a mask
        bias = attn_bias
        if self.position == "relative":
            bias = self.relative_attention_bias(L, S, offset=offset)  # (H, L, S)
        p = self.dropout if self.training else 0.0
        o, attn = ops.scaled_dot_product_attention_forward(q, self._expand(k), self._expand(v),
                                                           attn_mask=combine(masks, x.dtype), dropout_p=p,
                                                           is_causal=is_causal, generator=self.generator, bias=bias)
        o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (B, L, E))  # merge heads
        self.save_for_backward((proj, rope, attn, attn_bias is not None))
        self.attn_weights = attn.probs if need_weights else None
        return self.out_proj(o)

    def _heads(self, y: Any, n: int) -> Any:
        """(B, T, n D) -> (B, n, T, D)."""
        xp = get_array_module(y)
        return xp.permute_dims(xp.reshape(y, (y.shape[0], y.shape[1], n, self.head_dim)), (0, 2, 1, 3))

    def _expand(self, kv: Any) -> Any:
        """(B, H_kv, S, D) -> (B, H, S, D): kv head g serves query heads g G .. g G + G - 1."""
        group = self.num_heads // self.num_kv_heads
        if group == 1:
            return kv
        xp = get_array_module(kv)
        B, G, S, D = kv.shape
        wide = xp.broadcast_to(xp.reshape(kv, (B, G, 1, S, D)), (B, G, group, S, D))
        return xp.reshape(wide, (B, G * group, S, D))

    def _reduce(self, d: Any) -> Any:
        """(B, H, S, D) -> (B, H_kv, S, D): the inverse of :meth:`_expand`'s fan-out, a sum over each group."""
        group = self.num_heads // self.num_kv_heads
        if group == 1:
            return d
        xp = get_array_module(d)
        B, H, S, D = d.shape
        return xp.sum(xp.reshape(d, (B, self.num_kv_heads, group, S, D)), axis=2)

    def backward(self, dy: Any) -> Any:
        """dL/dy (B, L, E) -> dx (B, L, E)[, dattn_bias]; accumulates every parameter's gradient."""
        proj, rope, attn, has_bias = self.saved()
        xp = get_array_module(dy)
        do = self.out_proj.backward(dy)  # forward: y = o W_o^T + b_o
        do = self._heads(do, self.num_heads)  # split heads, (B, H, L, D)
        dq, dk, dv, dbias = ops.scaled_dot_product_attention_backward(do, attn)
        dk, dv = self._reduce(dk), self._reduce(dv)  # forward: each kv head was read by G query heads
        if self.position == "relative":
            self.relative_attention_bias.backward(dbias)
        if rope is not None:
            dq = ops.rope_backward(dq, rope[0])  # forward: q = rope(q)
            dk = ops.rope_backward(dk, rope[1])  # forward: k = rope(k)
        dy_proj = xp.concat([self._merge(g) for g in (dq, dk, dv)], axis=-1)  # (B, L, (H + 2 H_kv) D)
        dx, dw, db = ops.linear_backward(dy_proj, proj)  # forward: [q | k | v] = x W_in^T + b_in
        self.in_proj_weight.accumulate(dw)
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(db)
        return (dx, dbias) if has_bias else dx

    @staticmethod
    def _merge(g: Any) -> Any:
        """(B, n, T, D) -> (B, T, n D)."""
        xp = get_array_module(g)
        return xp.reshape(xp.permute_dims(g, (0, 2, 1, 3)), (g.shape[0], g.shape[2], g.shape[1] * g.shape[3]))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"position={self.position!r}, dropout={self.dropout}")


def _check(num_kv_heads: int, position: str | None) -> Any:
    def build(rng: Any) -> ModuleCheck:
        m = GroupedQueryAttention(8, 4, num_kv_heads, dropout=0.2, position=position, num_buckets=6, max_distance=5,
                                  dtype="float64")
        m.in_proj_bias.data = backend.asarray(rng.normal(size=m.in_proj_bias.shape) * 0.1)
        padding = backend.asarray([[False] * 4, [False, False, False, True]])
        return ModuleCheck(m, (rng.normal(size=(2, 4, 8)),), {"key_padding_mask": padding, "is_causal": True})

    return build


register_module_check("GroupedQueryAttention.gqa", _check(2, None))
register_module_check("GroupedQueryAttention.mqa_rotary", _check(1, "rotary"))
register_module_check("GroupedQueryAttention.alibi", _check(2, "alibi"))
register_module_check("GroupedQueryAttention.relative", _check(4, "relative"))
