"""``MultiheadAttention``, as ``torch.nn.MultiheadAttention(batch_first=True)``.

Forward, for H heads of size D = E / H:

    q, k, v = query W_q^T + b_q, key W_k^T + b_k, value W_v^T + b_v   # (B, L|S, E)
    split heads                                                     # (B, L, E) -> (B, H, L, D)
    o = softmax(q k^T / sqrt(D) + mask) v                           # (B, H, L, D)
    merge heads, y = o W_o^T + b_o                                  # (B, L, E)

W_q, W_k, W_v are the three row blocks of ``in_proj_weight`` (3E, E), as in
PyTorch. When query, key and value are the same array (self-attention) the
three projections are one (B, L, E) x (E, 3E) GEMM, and when key is value
(cross-attention on an encoder memory) the key and value projections are one.
The backward mirrors those fusions; docs/backprop-walkthrough.md walks through it.

Inference extras: ``cache=`` (an :class:`~nptransformer.generation.AttentionCache`)
decodes incrementally, and ``attn_weights`` keeps the per-head probabilities
of the last forward called with ``need_weights=True`` (docs/attention.md).
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..backend import dtype_name, get_array_module
from ..functional.attention import scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from ..functional.linear import linear_backward, linear_forward
from ..grad_mode import is_grad_enabled
from . import init
from .linear import Linear
from .module import Module, Parameter


class MultiheadAttention(Module):
    """Multi-head attention with PyTorch's parameters and mask semantics (batch first).

    Parameters: ``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,),
    ``out_proj.weight`` (E, E), ``out_proj.bias`` (E,) — the keys of
    torch's state_dict. Boolean masks: True = may NOT attend.

    Only ``batch_first=True`` is supported (the argument exists so torch code
    reads the same). ``attn_weights``: the per-head attention probabilities
    (B, H, L, S) of the last forward called with ``need_weights=True``, else None.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = True, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_positive_int("embed_dim", embed_dim)
        _checks.check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        if not batch_first:
            raise ValueError("batch_first must be True: nptransformer's layers take (B, T, E) inputs")
        _checks.check_probability("dropout", dropout)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.generator = dropout, generator
        self.in_proj_weight = Parameter(backend.zeros((3 * embed_dim, embed_dim), dtype=dtype))
        init.xavier_uniform_(self.in_proj_weight, generator=generator)  # as torch
        self.in_proj_bias = Parameter(backend.zeros((3 * embed_dim,), dtype=dtype)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype, generator=generator)
        if bias:
            self.out_proj.bias.data = backend.zeros((embed_dim,), dtype=dtype)
        self.attn_weights = None

    # -- forward ------------------------------------------------------------
    def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = True,
                attn_mask: Any = None, average_attn_weights: bool = True, is_causal: bool = False,
                cache: Any = None) -> tuple[Any, Any]:
        """Attend from query (B, L, E) to key (B, S, E) / value (B, S, E).

        Returns (output (B, L, E), weights): weights are the attention
        probabilities averaged over heads (B, L, S), per head (B, H, L, S)
        with ``average_attn_weights=False``, or None without ``need_weights``.
        Masks: ``attn_mask`` (L, S) or (B*H, L, S), ``key_padding_mask``
        (B, S); boolean (True = masked) or additive float. ``is_causal``
        masks key j > query i (combined with any given mask).

        ``cache`` (inference only, inside ``no_grad``): an ``AttentionCache``.
        In self-attention the new keys and values are appended to it and the
        queries attend to all S = cached + L positions (masks then cover S
        keys, and ``is_causal`` is bottom-right aligned: query i sits at
        absolute position S - L + i and sees keys j <= S - L + i). In
        cross-attention (key is value) the memory is projected on the first
        call only; later calls reuse the cached keys and values.
        """
        B, L, S = self._check_inputs(query, key, value)
        E, H, D = self.embed_dim, self.num_heads, self.head_dim
        xp = get_array_module(query)
        w = self.in_proj_weight.data
        b = self.in_proj_bias.data if self.in_proj_bias is not None else None
        if cache is not None:
            self._check_cache_use(query, key, value, is_causal)
        if query is key and key is value:
            mode = "self"
            qkv, proj = linear_forward(query, w, b)  # (B, L, 3E): one GEMM for q, k and v
            q, k, v = _split_heads(qkv, 3, H, D)
            proj_ctx = (proj,)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, H, S_cached + L, D)
        elif key is value:
            mode = "kv"
            qp, proj_q = linear_forward(query, w[:E, :], _rows(b, 0, E))
            (q,) = _split_heads(qp, 1, H, D)
            if cache is not None and cache.length:
                k, v, proj_kv = cache.keys, cache.values, None  # the memory was projected on the first step
            else:
                kv, proj_kv = linear_forward(key, w[E:, :], _rows(b, E, 3 * E))  # (B, S, 2E)
                k, v = _split_heads(kv, 2, H, D)
                if cache is not None:
                    cache.append(k, v)
            proj_ctx = (proj_q, proj_kv)
        else:
            mode = "separate"
            projected, proj_ctx = [], []
            for i, x in enumerate((query, key, value)):
                y, c = linear_forward(x, w[i * E:(i + 1) * E, :], _rows(b, i * E, (i + 1) * E))
                projected.append(_split_heads(y, 1, H, D)[0])
                proj_ctx.append(c)
            q, k, v = projected
        S = k.shape[2]
        masks = self._masks(attn_mask, key_padding_mask, B, L, S, query.dtype)
        if cache is not None and is_causal:
            # is_causal is top-left aligned (query i sees keys j <= i), right only when L == S;
            # with cached keys the queries are the LAST L positions.
            masks.append(_causal_bottom_right(L, S, like=query))
            is_causal = False
        mask = _combine(masks, query.dtype)
        p = self.dropout if self.training else 0.0
        o, attn_ctx = scaled_dot_product_attention_forward(q, k, v, attn_mask=mask, dropout_p=p,
                                                           is_causal=is_causal, generator=self.generator)
        o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (B, L, E))  # (B, H, L, D) -> (B, L, E)
        y = self.out_proj(o)
        self.save_for_backward((mode, tuple(proj_ctx), attn_ctx, (B, L, S)))
        self.attn_weights = attn_ctx.probs if need_weights else None  # (B, H, L, S)
        weights = None
        if need_weights:
            weights = attn_ctx.probs
            if average_attn_weights:
                weights = xp.mean(weights, axis=1)
        return y, weights

    def _check_cache_use(self, query: Any, key: Any, value: Any, is_causal: bool) -> None:
        if is_grad_enabled():
            raise RuntimeError("MultiheadAttention: cache= is for inference; call the model inside "
                               "nptransformer.no_grad() (cached keys have no backward)")
        if key is not value:
            raise ValueError("MultiheadAttention: a cache needs self-attention (query is key is value) or "
                             "cross-attention (key is value)")
        if query is not key and is_causal:
            raise ValueError("MultiheadAttention: is_causal with a cross-attention cache is not supported")

    def _check_inputs(self, query: Any, key: Any, value: Any) -> tuple[int, int, int]:
        for name, x in (("query", query), ("key", key), ("value", value)):
            _checks.check_float(name, x)
            if x.ndim != 3:
                raise ValueError(f"{name} must have shape (B, T, {self.embed_dim}), got {tuple(x.shape)}")
            _checks.check_last_dim(name, x, self.embed_dim, "embed_dim")
        _checks.check_same_dtype(in_proj_weight=self.in_proj_weight.data, query=query, key=key, value=value)
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key and value must share (B, S), got {tuple(key.shape)} and {tuple(value.shape)}")
        if query.shape[0] != key.shape[0]:
            raise ValueError(f"query and key must have the same batch size, got {query.shape[0]} and {key.shape[0]}")
        return query.shape[0], query.shape[1], key.shape[1]

    def _masks(self, attn_mask: Any, key_padding_mask: Any, B: int, L: int, S: int, dtype: Any) -> list:
        """The given masks, checked and reshaped to broadcast to (B, H, L, S)."""
        H = self.num_heads
        masks = []
        if attn_mask is not None:
            _checks.check_array("attn_mask", attn_mask)
            xp = get_array_module(attn_mask)
            if tuple(attn_mask.shape) == (L, S):
                masks.append(attn_mask)
            elif tuple(attn_mask.shape) == (B * H, L, S):
                masks.append(xp.reshape(attn_mask, (B, H, L, S)))
            else:
                raise ValueError(f"attn_mask must have shape ({L}, {S}) or ({B * H}, {L}, {S}), got {tuple(attn_mask.shape)}")
        if key_padding_mask is not None:
            _checks.check_array("key_padding_mask", key_padding_mask)
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(f"key_padding_mask must have shape ({B}, {S}), got {tuple(key_padding_mask.shape)}")
            xp = get_array_module(key_padding_mask)
            masks.append(xp.reshape(key_padding_mask, (B, 1, 1, S)))
        for name, m in zip(("attn_mask", "key_padding_mask"), masks):
            if dtype_name(m.dtype) not in ("bool", dtype_name(dtype)):
                raise TypeError(f"{name} must be bool or {dtype_name(dtype)} (the query's dtype), got {dtype_name(m.dtype)}")
        return masks

    # -- backward -----------------------------------------------------------
    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        """dL/d(output) (B, L, E) -> (dquery, dkey, dvalue); parameter gradients are accumulated.

        When forward got one array as query, key and value, its whole gradient
        is returned as dquery (dkey = dvalue = None); when key was value, as
        dkey (dvalue = None). Derivation: docs/backprop-walkthrough.md.
        """
        mode, proj_ctx, attn_ctx, (B, L, S) = self.saved()
        H, D = self.num_heads, self.head_dim
        xp = get_array_module(dy)
        do = self.out_proj.backward(dy)  # forward: y = o W_o^T + b_o
        do = xp.permute_dims(xp.reshape(do, (B, L, H, D)), (0, 2, 1, 3))  # (B, L, E) -> (B, H, L, D)
        dq, dk, dv = scaled_dot_product_attention_backward(do, attn_ctx)
        if mode == "self":
            dx, dw, db = linear_backward(_merge_heads(xp, [dq, dk, dv]), proj_ctx[0])
            self._accumulate([dw], [db])
            return dx, None, None
        if mode == "kv":
            dquery, dwq, dbq = linear_backward(_merge_heads(xp, [dq]), proj_ctx[0])
            dkey, dwkv, dbkv = linear_backward(_merge_heads(xp, [dk, dv]), proj_ctx[1])
            self._accumulate([dwq, dwkv], [dbq, dbkv])
            return dquery, dkey, None
        grads = [linear_backward(_merge_heads(xp, [g]), c) for g, c in zip((dq, dk, dv), proj_ctx)]
        self._accumulate([g[1] for g in grads], [g[2] for g in grads])
        return grads[0][0], grads[1][0], grads[2][0]

    def _accumulate(self, dweights: list, dbiases: list) -> None:
        xp = get_array_module(dweights[0])
        self.in_proj_weight.accumulate(dweights[0] if len(dweights) == 1 else xp.concat(dweights, axis=0))
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(dbiases[0] if len(dbiases) == 1 else xp.concat(dbiases, axis=0))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


def _rows(b: Any, start: int, stop: int) -> Any:
    return b[start:stop] if b is not None else None


def _split_heads(x: Any, n: int, H: int, D: int) -> list:
    """(B, T, n*H*D) -> n arrays (B, H, T, D), views where the backend allows."""
    xp = get_array_module(x)
    B, T = x.shape[0], x.shape[1]
    x = xp.permute_dims(xp.reshape(x, (B, T, n, H, D)), (2, 0, 3, 1, 4))  # (n, B, H, T, D)
    return [x[i, ...] for i in range(n)]


def _merge_heads(xp: Any, grads: list) -> Any:
    """n arrays (B, H, T, D) -> (B, T, n*H*D), the inverse of _split_heads.

    Each gradient is copied once, straight into its slot of the (B, T, n, H, D)
    result (stacking first and transposing after would copy everything twice).
    """
    B, H, T, D = grads[0].shape
    out = backend.zeros((B, T, len(grads), H, D), like=grads[0])
    for i, g in enumerate(grads):
        out[:, :, i, :, :] = xp.permute_dims(g, (0, 2, 1, 3))  # (B, H, T, D) -> (B, T, H, D)
    return xp.reshape(out, (B, T, len(grads) * H * D))


def _combine(masks: list, dtype: Any) -> Any:
    """One mask from several: bool if all are bool (masked where any is), else additive float."""
    if len(masks) < 2:
        return masks[0] if masks else None
    xp = get_array_module(masks[0])
    if all(dtype_name(m.dtype) == "bool" for m in masks):
        combined = masks[0]
        for m in masks[1:]:
            combined = xp.logical_or(combined, m)
        return combined
    combined = _additive(masks[0], dtype)
    for m in masks[1:]:
        combined = combined + _additive(m, dtype)
    return combined


def _causal_bottom_right(L: int, S: int, like: Any) -> Any:
    """(L, S) bool, True where key j > S - L + i: the L queries are the last L of S positions."""
    xp = get_array_module(like)
    i = xp.reshape(backend.arange(L, like=like), (L, 1)) + (S - L)
    j = xp.reshape(backend.arange(S, like=like), (1, S))
    return j > i


def _additive(mask: Any, dtype: Any) -> Any:
    """A boolean mask as an additive one (-inf where True); float masks pass through."""
    if dtype_name(mask.dtype) != "bool":
        return mask
    xp = get_array_module(mask)
    return xp.where(mask, backend.full((), -math.inf, dtype, like=mask), backend.full((), 0.0, dtype, like=mask))
