"""Attention for recurrent decoders: Bahdanau's additive score and Luong's dot, general and concat scores.

A recurrent decoder state s (the query) scores every encoder output h_j (the
keys, which are also the values); a softmax over the source turns the scores
into weights a_j and the context is c = sum_j a_j h_j. Padded source
positions (``key_padding_mask`` True) get weight 0.

- Bahdanau et al. (2015), "additive": score(s, h_j) = v^T tanh(W_s s + W_h h_j + b),
  queried with the *previous* decoder state s_{t-1}; the context then joins
  the decoder's input at step t.
- Luong et al. (2015), "multiplicative", queried with the *current* state s_t:
  dot s^T h_j, general s^T W_a h_j, concat v^T tanh(W_a [s; h_j]); the output
  is the attentional hidden state s~_t = tanh(W_c [c_t; s_t]).

Both take every query of a sequence at once, query (B, T, Cq), so a Luong
decoder attends for all target positions in one call; a Bahdanau decoder
calls once per step with T = 1. Each keeps its last weights (B, T, S) in
``attn_weights``.

>>> import numpy as np
>>> attn = LuongAttention(4, 6, score="general")
>>> out, w = attn(np.ones((2, 3, 4), np.float32), np.ones((2, 5, 6), np.float32),
...               key_padding_mask=np.array([[False] * 5, [False, False, True, True, True]]))
>>> out.shape, w.shape, w[1, 0].round(3).tolist()   # padded keys get no weight
((2, 3, 4), (2, 3, 5), [0.5, 0.5, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import dtype_name, get_array_module
from ..kernels import ops
from ..registry import ModuleCheck, register_module_check
from .linear import Linear
from .module import Module


def _check_query_keys(query: Any, keys: Any, key_padding_mask: Any, query_size: int, key_size: int) -> None:
    _checks.check_float("query", query)
    _checks.check_float("keys", keys)
    _checks.check_ndim("query", query, (3,))
    _checks.check_ndim("keys", keys, (3,))
    _checks.check_last_dim("query", query, query_size, "query_size")
    _checks.check_last_dim("keys", keys, key_size, "key_size")
    if query.shape[0] != keys.shape[0]:
        raise ValueError(f"query and keys must have the same batch size, got {query.shape[0]} and {keys.shape[0]}")
    if key_padding_mask is not None:
        want = (keys.shape[0], keys.shape[1])
        if tuple(key_padding_mask.shape) != want or dtype_name(key_padding_mask.dtype) != "bool":
            raise ValueError(f"key_padding_mask must be a bool array of shape {want} (B, S), True at padding; got "
                             f"{key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}")


class _Attend(Module):
    """scores (B, T, S), keys (B, S, C) -> weights = masked softmax(scores), context = weights @ keys."""

    def forward(self, scores: Any, keys: Any, key_padding_mask: Any) -> tuple[Any, Any]:
        xp = get_array_module(scores)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, :]  # (B, 1, S)
        if mask is not None:
            scores = xp.where(mask, -xp.inf, scores)  # exp(-inf) = 0: padding gets no weight
        weights, sctx = ops.softmax_forward(scores, axis=-1)
        context, mctx = ops.matmul_forward(weights, keys)
        self.save_for_backward((mask, sctx, mctx))
        return context, weights

    def backward(self, dcontext: Any) -> tuple[Any, Any]:
        """dL/dcontext (B, T, C) -> (dL/dscores (B, T, S), dL/dkeys (B, S, C))."""
        mask, sctx, mctx = self.saved()
        dweights, dkeys = ops.matmul_backward(dcontext, mctx)  # forward: context = weights @ keys
        dscores = ops.softmax_backward(dweights, sctx)  # forward: weights = softmax(scores)
        if mask is not None:  # forward: scores = where(mask, -inf, scores)
            dscores = get_array_module(dscores).where(mask, 0.0, dscores)
        return dscores, dkeys


class _DotScore(Module):
    """score = s^T h (``general``: s^T W_a h, W_a (Cq, Ck) as a bias-free Linear on the keys)."""

    def __init__(self, query_size: int, key_size: int, general: bool, dtype: Any, generator: Any):
        super().__init__()
        if not general and query_size != key_size:
            raise ValueError(f"the dot score needs query_size == key_size, got {query_size} and {key_size}; "
                             "use score='general' or 'concat'")
        self.key_proj = Linear(key_size, query_size, bias=False, dtype=dtype, generator=generator) if general else None

    def forward(self, query: Any, keys: Any) -> Any:
        xp = get_array_module(query)
        k = keys if self.key_proj is None else self.key_proj(keys)  # (B, S, Cq)
        scores, ctx = ops.matmul_forward(query, xp.permute_dims(k, (0, 2, 1)))  # (B, T, S)
        self.save_for_backward(ctx)
        return scores

    def backward(self, dscores: Any) -> tuple[Any, Any]:
        xp = get_array_module(dscores)
        dq, dkt = ops.matmul_backward(dscores, self.saved())  # forward: scores = q k^T
        dk = xp.permute_dims(dkt, (0, 2, 1))
        return dq, (dk if self.key_proj is None else self.key_proj.backward(dk))


class _AdditiveScore(Module):
    """score = v^T tanh(W_q s + W_k h (+ b)): Bahdanau's score, and Luong's concat (W_a [s; h] = W_q s + W_k h)."""

    def __init__(self, query_size: int, key_size: int, attention_size: int, key_bias: bool, dtype: Any,
                 generator: Any):
        super().__init__()
        _checks.check_positive_int("attention_size", attention_size)
        self.query_proj = Linear(query_size, attention_size, bias=False, dtype=dtype, generator=generator)
        self.key_proj = Linear(key_size, attention_size, bias=key_bias, dtype=dtype, generator=generator)
        self.v = Linear(attention_size, 1, bias=False, dtype=dtype, generator=generator)

    def forward(self, query: Any, keys: Any) -> Any:
        q = self.query_proj(query)[:, :, None, :]  # (B, T, 1, A)
        k = self.key_proj(keys)[:, None, :, :]  # (B, 1, S, A)
        e, ctx = ops.tanh_forward(q + k)  # (B, T, S, A)
        self.save_for_backward(ctx)
        return self.v(e)[..., 0]  # (B, T, S)

    def backward(self, dscores: Any) -> tuple[Any, Any]:
        xp = get_array_module(dscores)
        de = self.v.backward(dscores[..., None])  # forward: scores = e v
        dpre = ops.tanh_backward(de, self.saved())  # forward: e = tanh(q + k)
        dq = self.query_proj.backward(xp.sum(dpre, axis=2))  # q was broadcast over the source axis
        dk = self.key_proj.backward(xp.sum(dpre, axis=1))  # k was broadcast over the query axis
        return dq, dk


class BahdanauAttention(Module):
    """Additive attention: score(s, h_j) = v^T tanh(W_s s + W_h h_j + b).

    ``forward(query (B, T, Cq), keys (B, S, Ck), key_padding_mask=None (B, S) bool)``
    -> (context (B, T, Ck), weights (B, T, S)). ``backward(dcontext)`` -> (dquery, dkeys).
    Parameters: ``score.query_proj.weight`` (A, Cq) = W_s, ``score.key_proj.weight``
    (A, Ck) and ``.bias`` = W_h, b, ``score.v.weight`` (1, A) = v^T.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int, dtype: Any = "float32",
                 generator: Any = None):
        super().__init__()
        _checks.check_positive_int("query_size", query_size)
        _checks.check_positive_int("key_size", key_size)
        self.query_size, self.key_size = query_size, key_size
        self.score = _AdditiveScore(query_size, key_size, attention_size, True, dtype, generator)
        self.attend = _Attend()
        self.attn_weights = None

    def forward(self, query: Any, keys: Any, key_padding_mask: Any = None) -> tuple[Any, Any]:
        """query (B, T, Cq), keys (B, S, Ck) -> (context (B, T, Ck), weights (B, T, S))."""
        _check_query_keys(query, keys, key_padding_mask, self.query_size, self.key_size)
        context, self.attn_weights = self.attend(self.score(query, keys), keys, key_padding_mask)
        return context, self.attn_weights

    def backward(self, dcontext: Any) -> tuple[Any, Any]:
        """dL/dcontext (B, T, Ck) -> (dL/dquery (B, T, Cq), dL/dkeys (B, S, Ck))."""
        dscores, dkeys = self.attend.backward(dcontext)
        dquery, dkeys_score = self.score.backward(dscores)
        return dquery, dkeys + dkeys_score  # the keys are scored and averaged

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}"


class LuongAttention(Module):
    """Multiplicative attention with the attentional hidden state s~ = tanh(W_c [c; s]).

    ``score``: "dot" (s^T h, needs query_size == key_size), "general"
    (s^T W_a h) or "concat" (v^T tanh(W_a [s; h]), with ``attention_size``).
    ``forward(query (B, T, Cq), keys (B, S, Ck), key_padding_mask=None)`` ->
    (s~ (B, T, out_size), weights (B, T, S)); out_size defaults to query_size.
    ``backward(ds~)`` -> (dquery, dkeys). ``output_proj.weight`` (out, Ck + Cq) is W_c.
    """

    SCORES = ("dot", "general", "concat")

    def __init__(self, query_size: int, key_size: int, score: str = "general", out_size: int | None = None,
                 attention_size: int | None = None, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_positive_int("query_size", query_size)
        _checks.check_positive_int("key_size", key_size)
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        self.query_size, self.key_size, self.score_name = query_size, key_size, score
        out_size = query_size if out_size is None else out_size
        if score == "concat":
            self.score = _AdditiveScore(query_size, key_size, attention_size or query_size, False, dtype, generator)
        else:
            self.score = _DotScore(query_size, key_size, score == "general", dtype, generator)
        self.attend = _Attend()
        self.output_proj = Linear(key_size + query_size, out_size, bias=False, dtype=dtype, generator=generator)
        self.attn_weights = None

    def forward(self, query: Any, keys: Any, key_padding_mask: Any = None) -> tuple[Any, Any]:
        """query (B, T, Cq) = s_t, keys (B, S, Ck) -> (tanh(W_c [c_t; s_t]) (B, T, out), weights (B, T, S))."""
        _check_query_keys(query, keys, key_padding_mask, self.query_size, self.key_size)
        xp = get_array_module(query)
        context, self.attn_weights = self.attend(self.score(query, keys), keys, key_padding_mask)
        out, ctx = ops.tanh_forward(self.output_proj(xp.concat([context, query], axis=-1)))
        self.save_for_backward(ctx)
        return out, self.attn_weights

    def backward(self, dout: Any) -> tuple[Any, Any]:
        """dL/ds~ (B, T, out) -> (dL/dquery (B, T, Cq), dL/dkeys (B, S, Ck))."""
        dcat = self.output_proj.backward(ops.tanh_backward(dout, self.saved()))  # forward: s~ = tanh(W_c [c; s])
        dcontext, dquery = dcat[..., :self.key_size], dcat[..., self.key_size:]
        dscores, dkeys = self.attend.backward(dcontext)
        dq_score, dk_score = self.score.backward(dscores)
        return dquery + dq_score, dkeys + dk_score

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, score={self.score_name!r}"


def _check(make: Any, same_size: bool = False) -> Any:
    def build(rng: Any) -> ModuleCheck:
        Ck = 3 if same_size else 4
        mask = backend.asarray([[False, False, False, False], [False, False, True, True]])
        return ModuleCheck(make(), (rng.normal(size=(2, 2, 3)), rng.normal(size=(2, 4, Ck))),
                           {"key_padding_mask": mask})

    return build


register_module_check("BahdanauAttention", _check(lambda: BahdanauAttention(3, 4, 5, dtype="float64")))
register_module_check("LuongAttention.dot", _check(lambda: LuongAttention(3, 3, "dot", dtype="float64"), True))
register_module_check("LuongAttention.general", _check(lambda: LuongAttention(3, 4, "general", dtype="float64")))
register_module_check("LuongAttention.concat",
                      _check(lambda: LuongAttention(3, 4, "concat", out_size=2, attention_size=5, dtype="float64")))
