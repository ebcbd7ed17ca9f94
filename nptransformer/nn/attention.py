"""``MultiheadAttention``, as ``torch.nn.MultiheadAttention(batch_first=True)``, with explicit self- and cross-attention.

Forward, for H heads of size D = E / H:

    q, k, v = query W_q^T + b_q, key W_k^T + b_k, value W_v^T + b_v   # (B, L|S, E)
    split heads                                                     # (B, L, E) -> (B, H, L, D)
    o = softmax(q k^T / sqrt(D) + mask + attn_bias) v               # (B, H, L, D)
    merge heads, y = o W_o^T + b_o                                  # (B, L, E)

W_q, W_k, W_v are the three row blocks of ``in_proj_weight`` (3E, E), as in
PyTorch. Three ways in, chosen by the caller, never by comparing arrays:

- ``mha(query, key, value)``: torch's signature; three projections, and
  ``backward`` returns (dquery, dkey, dvalue).
- ``mha.self_attention(x)``: query = key = value = x, projected by one
  (B, L, E) x (E, 3E) GEMM; ``backward`` returns dx, the three paths' sum.
- ``mha.cross_attention(x, memory)``: key = value = memory, whose two
  projections are one GEMM; ``backward`` returns (dx, dmemory).

Each also takes ``attn_bias``: a float array broadcastable to the scores
(B, H, L, S) added before the softmax, with a gradient (relative-position
biases, ALiBi); ``backward`` then returns dattn_bias as its last value.
docs/backprop-walkthrough.md follows the gradient through.

Inference extras: ``cache=`` (an :class:`~nptransformer.generation.AttentionCache`)
on the self- and cross-attention paths decodes incrementally, and
``attn_weights`` keeps the per-head probabilities of the last forward
called with ``need_weights=True`` (docs/attention.md).
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..kernels import ops
from ..registry import CallAs, ModuleCheck, register_module_check
from . import init
from .attention_masks import attention_masks, causal_bottom_right, combine
from .linear import Linear
from ._examples import padding_mask
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

    # -- the three ways in ------------------------------------------------------
    def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = True,
                attn_mask: Any = None, average_attn_weights: bool = True, is_causal: bool = False,
                attn_bias: Any = None) -> tuple[Any, Any]:
        """Attend from query (B, L, E) to key (B, S, E) / value (B, S, E), each projected on its own.

        Returns (output (B, L, E), weights): weights are the attention
        probabilities averaged over heads (B, L, S), per head (B, H, L, S)
        with ``average_attn_weights=False``, or None without ``need_weights``.
        Masks: ``attn_mask`` (L, S) or (B*H, L, S), ``key_padding_mask``
        (B, S); boolean (True = masked) or additive float. ``is_causal``
        masks key j > query i (combined with any given mask).
        ``backward`` returns (dquery, dkey, dvalue[, dattn_bias]).
        """
        self._check_inputs(query=query, key=key, value=value)
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key and value must share (B, S), got {tuple(key.shape)} and {tuple(value.shape)}")
        q, proj_q = self._project(query, 0, 1)
        k, proj_k = self._project(key, 1, 1)
        v, proj_v = self._project(value, 2, 1)
        y = self._attend("separate", (proj_q, proj_k, proj_v), q[0], k[0], v[0], attn_mask, key_padding_mask,
                         is_causal, need_weights, attn_bias)
        weights = self.attn_weights if need_weights else None
        if weights is not None and average_attn_weights:
            weights = get_array_module(weights).mean(weights, axis=1)
        return y, weights

    def self_attention(self, x: Any, attn_mask: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                       need_weights: bool = False, attn_bias: Any = None, cache: Any = None,
                       packing: Any = None) -> Any:
        """Self-attention, x (B, L, E) -> (B, L, E): q, k and v all from x, projected by one GEMM.

        Masks as in :meth:`forward`. ``cache`` (inference, inside ``no_grad``):
        the new keys and values are appended to it and the queries attend to
        all S = cached + L positions (masks then cover S keys, and
        ``is_causal`` is bottom-right aligned: query i sits at position
        S - L + i and sees keys j <= S - L + i). ``packing`` (a
        :class:`~nptransformer.nn.packing.Packing`): x is (1, N, E), the real
        tokens of a padded (B, T) batch; the projections run on the N tokens,
        the attention per sentence with the padding masked (masks and
        ``is_causal`` then refer to the (B, T) layout), and the output is
        (1, N, E). ``backward`` returns dx (the q, k and v paths added)[, dattn_bias].
        """
        self._check_inputs(x=x)
        self._check_cache(cache)
        if packing is not None:
            if cache is not None or key_padding_mask is not None:
                raise ValueError("MultiheadAttention: packing= masks the padding itself; it takes no "
                                 "key_padding_mask and no cache")
            key_padding_mask = packing.key_padding_mask
        qkv, proj = self._project(x, 0, 3, packing)  # (B, L, 3E): one GEMM, then three (B, H, L, D) views
        q, k, v = qkv
        extra = []
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, S_cached + L, D)
            if is_causal:
                # is_causal is top-left aligned (query i sees keys j <= i), right only when L == S;
                # with cached keys the queries are the LAST L positions. One query (a decoding step)
                # is the newest position and sees every key: no mask at all.
                if x.shape[1] > 1:
                    extra = [causal_bottom_right(x.shape[1], k.shape[2], like=x)]
                is_causal = False
        return self._attend("self", (proj,), q, k, v, attn_mask, key_padding_mask, is_causal, need_weights,
                            attn_bias, extra, packing)

    def cross_attention(self, x: Any, memory: Any, attn_mask: Any = None, key_padding_mask: Any = None,
                        is_causal: bool = False, need_weights: bool = False, attn_bias: Any = None,
                        cache: Any = None) -> Any:
        """Cross-attention from x (B, L, E) to an encoder's memory (B, S, E) -> (B, L, E).

        The keys and values both come from memory, projected by one GEMM.
        ``cache`` (inference): the memory is projected on the first call and
        its keys and values reused after. ``backward`` returns (dx, dmemory)[, dattn_bias].
        """
        self._check_inputs(x=x, memory=memory)
        self._check_cache(cache)
        if cache is not None and is_causal:
            raise ValueError("MultiheadAttention: is_causal with a cross-attention cache is not supported")
        (q,), proj_q = self._project(x, 0, 1)
        if cache is not None and cache.length:
            k, v, proj_kv = cache.keys, cache.values, None  # the memory was projected on the first step
        else:
            (k, v), proj_kv = self._project(memory, 1, 2)  # (B, S, 2E): keys and values in one GEMM
            if cache is not None:
                cache.append(k, v)
        return self._attend("cross", (proj_q, proj_kv), q, k, v, attn_mask, key_padding_mask, is_causal,
                            need_weights, attn_bias)

    # -- shared steps -------------------------------------------------------------
    def _project(self, x: Any, first: int, n: int, packing: Any = None) -> tuple[list, Any]:
        """Rows first*E .. (first+n)*E of the in-projection applied to x (B, T, E): n arrays (B, H, T, D).

        With ``packing``, x is (1, N, E) and the projected tokens are laid out as (B, T) first."""
        E = self.embed_dim
        w = self.in_proj_weight.data[first * E:(first + n) * E, :]
        b = self.in_proj_bias.data[first * E:(first + n) * E] if self.in_proj_bias is not None else None
        y, ctx = ops.linear_forward(x, w, b)  # (B, T, n*E)
        if packing is not None:
            y = packing.unpack(y)  # (1, N, n*E) -> (B, T, n*E)
        return _split_heads(y, n, self.num_heads, self.head_dim), ctx

    def _attend(self, kind: str, proj: tuple, q: Any, k: Any, v: Any, attn_mask: Any, key_padding_mask: Any,
                is_causal: bool, need_weights: bool, attn_bias: Any, extra_masks: list = (),
                packing: Any = None) -> Any:
        """Heads (B, H, L, D) x (B, H, S, D) -> the output (B, L, E), or (1, N, E) packed; saves what backward
        needs."""
        B, H, L, S = q.shape[0], self.num_heads, q.shape[2], k.shape[2]
        xp = get_array_module(q)
        masks = attention_masks(attn_mask, key_padding_mask, B, H, L, S, q.dtype) + list(extra_masks)
        p = self.dropout if self.training else 0.0
        o, attn = ops.scaled_dot_product_attention_forward(q, k, v, attn_mask=combine(masks, q.dtype), dropout_p=p,
                                                           is_causal=is_causal, generator=self.generator,
                                                           bias=attn_bias)
        o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (B, L, self.embed_dim))  # (B, H, L, D) -> (B, L, E)
        if packing is not None:
            o = packing.pack(o)  # (B, L, E) -> (1, N, E): the out-projection runs on the real tokens only
        y = self.out_proj(o)
        self.save_for_backward((kind, proj, attn, attn_bias is not None, packing))
        self.attn_weights = attn.probs if need_weights else None  # (B, H, L, S)
        return y

    def _check_inputs(self, **arrays: Any) -> None:
        for name, x in arrays.items():
            _checks.check_float(name, x)
            if x.ndim != 3:
                raise ValueError(f"{name} must have shape (B, T, {self.embed_dim}), got {tuple(x.shape)}")
            _checks.check_last_dim(name, x, self.embed_dim, "embed_dim")
        _checks.check_same_dtype(in_proj_weight=self.in_proj_weight.data, **arrays)
        batches = {name: x.shape[0] for name, x in arrays.items()}
        if len(set(batches.values())) > 1:
            raise ValueError(f"{' and '.join(batches)} must have the same batch size, got {list(batches.values())}")

    def _check_cache(self, cache: Any) -> None:
        if cache is not None and is_grad_enabled():
            raise RuntimeError("MultiheadAttention: cache= is for inference; call the model inside "
                               "nptransformer.no_grad() (cached keys have no backward)")

    # -- backward -------------------------------------------------------------------
    def backward(self, dy: Any) -> Any:
        """dL/d(output) (B, L, E) -> the gradient of every array input of the forward that ran.

        (dquery, dkey, dvalue) after :meth:`forward`, dx after
        :meth:`self_attention`, (dx, dmemory) after :meth:`cross_attention`;
        dattn_bias appended when an ``attn_bias`` was given. Parameter
        gradients are accumulated. Derivation: docs/backprop-walkthrough.md.
        """
        kind, proj, attn, has_bias, packing = self.saved()
        xp = get_array_module(dy)
        do = self.out_proj.backward(dy)  # forward: y = o W_o^T + b_o
        if packing is not None:
            do = packing.unpack(do)  # forward: o = pack(o)
        B, L = do.shape[0], do.shape[1]
        do = xp.permute_dims(xp.reshape(do, (B, L, self.num_heads, self.head_dim)), (0, 2, 1, 3))  # (B, H, L, D)
        dq, dk, dv, dbias = ops.scaled_dot_product_attention_backward(do, attn)
        if kind == "self":
            # forward: [q | k | v] = x W_in^T + b_in, so dx collects all three paths in one GEMM
            dqkv = _merge_heads([dq, dk, dv])
            if packing is not None:
                dqkv = packing.pack(dqkv)  # forward: qkv = unpack(qkv)
            dx, dw, db = ops.linear_backward(dqkv, proj[0])
            self._accumulate([dw], [db])
            grads: tuple = (dx,)
        elif kind == "cross":
            dx, dwq, dbq = ops.linear_backward(_merge_heads([dq]), proj[0])
            dmemory, dwkv, dbkv = ops.linear_backward(_merge_heads([dk, dv]), proj[1])
            self._accumulate([dwq, dwkv], [dbq, dbkv])
            grads = (dx, dmemory)
        else:
            parts = [ops.linear_backward(_merge_heads([g]), c) for g, c in zip((dq, dk, dv), proj)]
            self._accumulate([p[1] for p in parts], [p[2] for p in parts])
            grads = tuple(p[0] for p in parts)
        if has_bias:
            grads += (dbias,)
        return grads[0] if len(grads) == 1 else grads

    def _accumulate(self, dweights: list, dbiases: list) -> None:
        xp = get_array_module(dweights[0])
        self.in_proj_weight.accumulate(dweights[0] if len(dweights) == 1 else xp.concat(dweights, axis=0))
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(dbiases[0] if len(dbiases) == 1 else xp.concat(dbiases, axis=0))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


def _split_heads(x: Any, n: int, H: int, D: int) -> list:
    """(B, T, n*H*D) -> n arrays (B, H, T, D), views where the backend allows."""
    xp = get_array_module(x)
    B, T = x.shape[0], x.shape[1]
    x = xp.permute_dims(xp.reshape(x, (B, T, n, H, D)), (2, 0, 3, 1, 4))  # (n, B, H, T, D)
    return [x[i, ...] for i in range(n)]


def _already_merged(grads: list) -> Any:
    """The (B, T, n*H*D) array the gradients are views of, when they sit in it exactly as :func:`_split_heads`
    would cut it (the keys-major attention kernel writes them so); else None."""
    if backend.backend_of(grads[0]) != "numpy":
        return None
    base = grads[0].base
    if base is None or any(g.base is not base for g in grads):
        return None
    B, H, T, D = grads[0].shape
    if not base.flags.c_contiguous or base.size != B * T * len(grads) * H * D or base.dtype != grads[0].dtype:
        return None
    merged = base.reshape((B, T, len(grads) * H * D))
    expected = _split_heads(merged, len(grads), H, D)
    if all(e.strides == g.strides and e.__array_interface__["data"] == g.__array_interface__["data"]
           for e, g in zip(expected, grads)):
        return merged
    return None


def _merge_heads(grads: list) -> Any:
    """n arrays (B, H, T, D) -> (B, T, n*H*D), the inverse of _split_heads.

    Each gradient is copied once, straight into its slot of the (B, T, n, H, D)
    result (stacking first and transposing after would copy everything twice).
    """
    xp = get_array_module(grads[0])
    B, H, T, D = grads[0].shape
    merged = _already_merged(grads)
    if merged is not None:
        return merged
    out = backend.empty((B, T, len(grads), H, D), like=grads[0])  # every slot is written below
    for i, g in enumerate(grads):
        out[:, :, i, :, :] = xp.permute_dims(g, (0, 2, 1, 3))  # (B, H, T, D) -> (B, T, H, D)
    return xp.reshape(out, (B, T, len(grads) * H * D))


def _check_self(rng: Any) -> ModuleCheck:
    m = MultiheadAttention(4, 2, dropout=0.3, dtype="float64")
    m.in_proj_bias.data = backend.asarray(rng.normal(size=12) * 0.1)
    return ModuleCheck(CallAs(m, "self_attention"), (rng.normal(size=(2, 3, 4)),),
                       {"key_padding_mask": padding_mask(2, 3), "is_causal": True})


def _check_cross(rng: Any) -> ModuleCheck:
    m = MultiheadAttention(4, 2, dropout=0.3, dtype="float64")
    mask = backend.asarray([[j < 2 and i == 0 for j in range(5)] for i in range(3)], dtype="bool")
    return ModuleCheck(CallAs(m, "cross_attention"), (rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))),
                       {"attn_mask": mask, "key_padding_mask": padding_mask(2, 5)})


def _check_separate(rng: Any) -> ModuleCheck:
    m = MultiheadAttention(4, 2, dtype="float64")
    return ModuleCheck(m, tuple(rng.normal(size=(2, t, 4)) for t in (3, 5, 5)),
                       {"key_padding_mask": padding_mask(2, 5), "need_weights": False})


def _check_bias(rng: Any) -> ModuleCheck:
    m = MultiheadAttention(4, 2, dtype="float64")
    x, bias = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 3))  # bias (H, L, S), broadcast over B
    return ModuleCheck(CallAs(m, "self_attention", keywords=("attn_bias",)), (x, bias), {"is_causal": True})


register_module_check("MultiheadAttention.self", _check_self)
register_module_check("MultiheadAttention.cross", _check_cross)
register_module_check("MultiheadAttention.separate", _check_separate)
register_module_check("MultiheadAttention.attn_bias", _check_bias)
