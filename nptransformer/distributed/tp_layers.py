"""Tensor-parallel layers (Megatron-LM): the feed-forward split by columns, attention split by heads.

With N ranks, rank r keeps a slice of each weight:

    column-parallel  h_r = act(x W1_r^T + b1_r)     W1_r: rows r F/N .. of W1 (F, C)   no communication
    row-parallel     y   = sum_r h_r W2_r^T + b2    W2_r: columns r F/N .. of W2 (C, F)  one all-reduce

so a sublayer costs one all-reduce of its (B, T, C) output forward and one
of its input gradient backward, through the op pair of
:mod:`nptransformer.functional.collectives`::

    x_r = copy_to_group(x)          # forward identity, backward all-reduce of dx
    ... rank r's columns / heads ...
    y   = reduce_from_group(y_r) + b  # forward all-reduce, backward identity

Attention is split the same way with whole heads per rank (each head's q,
k and v columns, and its columns of the output projection). Every rank
ends with the same replicated output, so the norms, residuals and
embeddings around these layers are ordinary modules, identical on all
ranks. Parameter names are the single-process ones (``in_proj_weight``,
``out_proj.weight``, ``linear1.weight`` ...) holding slices; each layer's
``shards`` says how each was cut (:mod:`.tensor_parallel` gathers them back).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..kernels import ops
from ..nn._examples import padding_mask
from ..nn.attention import MultiheadAttention, _merge_heads, _split_heads
from ..nn.attention_masks import attention_masks, combine
from ..nn.dropout import Dropout
from ..nn.feed_forward import FeedForward
from ..nn.module import Module, Parameter
from ..registry import CallAs, ModuleCheck, register_module_check
from .comm import Communicator

class Sharded(Module):
    """A layer holding slices of parameters: ``shards`` lists (Parameter, axis, blocks).

    The full array is ``blocks`` equal blocks along ``axis`` (in_proj_weight:
    q, k, v; a linear's weight: 1), each cut into N consecutive slices, rank
    r holding slice r of every block.
    """

    def __init__(self, comm: Any):
        super().__init__()
        self.comm, self.shards = comm, []

    def _slice(self, param: Parameter | None, axis: int, blocks: int) -> Parameter | None:
        p = _slice(param, axis, blocks, self.comm.rank, self.comm.size)
        if p is not None:
            self.shards.append((p, axis, blocks))
        return p


def slice_array(full: Any, axis: int, blocks: int, rank: int, size: int) -> Any:
    """Rank ``rank``'s part of ``full``: slice ``rank`` of ``size`` of each of the ``blocks`` blocks along ``axis``."""
    xp = get_array_module(full)
    step = full.shape[axis] // blocks
    parts = []
    for b in range(blocks):
        lo = b * step + rank * step // size
        index = [slice(None)] * full.ndim
        index[axis] = slice(lo, lo + step // size)
        parts.append(full[tuple(index)])
    return xp.concat(parts, axis=axis) if blocks > 1 else parts[0]


def _slice(param: Parameter | None, axis: int, blocks: int, rank: int, size: int) -> Parameter | None:
    if param is None:
        return None
    part = slice_array(param.data, axis, blocks, rank, size)
    return Parameter(get_array_module(part).asarray(part, copy=True))


class _Weights(Module):
    """weight and bias holder (a shard of a Linear), so the state_dict keys stay the single-process ones."""

    def __init__(self, weight: Parameter, bias: Parameter | None):
        super().__init__()
        self.weight, self.bias = weight, bias


class ParallelFeedForward(Sharded):
    """``FeedForward`` with linear1 split by output columns and linear2 by input columns over ``comm``.

    Built from a single-process :class:`~nptransformer.nn.FeedForward`
    ``ff`` (named activation). Shapes: x (..., C) -> (..., C), replicated.
    ``generator``: this rank's stream for the dropout on its hidden columns.
    """

    def __init__(self, ff: Any, comm: Any, generator: Any = None):
        super().__init__(comm)
        if isinstance(ff.activation, Module):
            raise ValueError("ParallelFeedForward needs a named activation ('relu', 'gelu', 'gelu_tanh'), "
                             f"got the module {type(ff.activation).__name__}")
        self.activation = ff.activation
        self.linear1 = _Weights(self._slice(ff.linear1.weight, 0, 1), self._slice(ff.linear1.bias, 0, 1))
        self.dropout = Dropout(ff.dropout.p, generator=generator)
        self.linear2 = _Weights(self._slice(ff.linear2.weight, 1, 1), None)
        self.linear2.bias = ff.linear2.bias  # replicated: added once, after the sum over ranks

    def forward(self, x: Any) -> Any:
        """x (..., C) -> (..., C); one all-reduce."""
        x, c_copy = ops.copy_to_group_forward(x, self.comm)
        b1 = None if self.linear1.bias is None else self.linear1.bias.data
        h, c1 = ops.linear_activation_forward(x, self.linear1.weight.data, b1, activation=self.activation)
        y, c2 = ops.linear_forward(self.dropout(h), self.linear2.weight.data)  # (..., F/N) -> partial (..., C)
        y, c_red = ops.reduce_from_group_forward(y, self.comm)
        c_bias = None
        if self.linear2.bias is not None:
            y, c_bias = ops.add_forward(y, self.linear2.bias.data)
        self.save_for_backward((c_copy, c1, c2, c_red, c_bias))
        return y

    def backward(self, dy: Any) -> Any:
        """dL/dy (..., C) -> dL/dx (..., C); one all-reduce."""
        c_copy, c1, c2, c_red, c_bias = self.saved()
        if c_bias is not None:
            dy, db2 = ops.add_backward(dy, c_bias)  # forward: y = sum_r y_r + b2
            self.linear2.bias.accumulate(db2)
        dy = ops.reduce_from_group_backward(dy, c_red)
        dh, dw2, _ = ops.linear_backward(dy, c2)  # forward: y_r = dropout(h_r) W2_r^T
        self.linear2.weight.accumulate(dw2)
        dx, dw1, db1 = ops.linear_activation_backward(self.dropout.backward(dh), c1)  # h_r = act(x W1_r^T + b1_r)
        self.linear1.weight.accumulate(dw1)
        if db1 is not None:
            self.linear1.bias.accumulate(db1)
        return ops.copy_to_group_backward(dx, c_copy)  # forward: x_r = x


class ParallelMultiheadAttention(Sharded):
    """``MultiheadAttention`` with H/N whole heads per rank; self- and cross-attention as the original.

    Built from a single-process :class:`~nptransformer.nn.MultiheadAttention`
    ``mha``. Shapes: x (B, L, E), memory (B, S, E) -> (B, L, E), replicated.
    ``generator``: this rank's stream for the dropout on its heads'
    attention probabilities. Masks as the original's ((L, S), (B*H, L, S)
    or (B, S) padding); no ``attn_bias`` and no decoding cache.
    """

    def __init__(self, mha: Any, comm: Any, generator: Any = None):
        super().__init__(comm)
        r, n = comm.rank, comm.size
        self.generator, self.dropout = generator, mha.dropout
        self.embed_dim, self.num_heads, self.head_dim = mha.embed_dim, mha.num_heads // n, mha.head_dim
        self.heads = slice(r * self.num_heads, (r + 1) * self.num_heads)
        self.in_proj_weight = self._slice(mha.in_proj_weight, 0, 3)  # (3 E/N, E): this rank's q, k, v rows
        self.in_proj_bias = self._slice(mha.in_proj_bias, 0, 3)
        self.out_proj = _Weights(self._slice(mha.out_proj.weight, 1, 1), None)  # (E, E/N)
        self.out_proj.bias = mha.out_proj.bias
        self.attn_weights = None

    def self_attention(self, x: Any, attn_mask: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                       need_weights: bool = False, attn_bias: Any = None, cache: Any = None) -> Any:
        """x (B, L, E) -> (B, L, E); backward returns dx."""
        self._refuse(attn_bias, cache)
        x, c_copy = ops.copy_to_group_forward(x, self.comm)
        (q, k, v), proj = self._project(x, 0, 3)
        return self._attend("self", (c_copy, proj), q, k, v, attn_mask, key_padding_mask, is_causal, need_weights)

    def cross_attention(self, x: Any, memory: Any, attn_mask: Any = None, key_padding_mask: Any = None,
                        is_causal: bool = False, need_weights: bool = False, attn_bias: Any = None,
                        cache: Any = None) -> Any:
        """x (B, L, E), memory (B, S, E) -> (B, L, E); backward returns (dx, dmemory)."""
        self._refuse(attn_bias, cache)
        x, c_x = ops.copy_to_group_forward(x, self.comm)
        memory, c_m = ops.copy_to_group_forward(memory, self.comm)
        (q,), proj_q = self._project(x, 0, 1)
        (k, v), proj_kv = self._project(memory, 1, 2)
        return self._attend("cross", (c_x, proj_q, c_m, proj_kv), q, k, v, attn_mask, key_padding_mask, is_causal,
                            need_weights)

    def _refuse(self, attn_bias: Any, cache: Any) -> None:
        if attn_bias is not None or cache is not None:
            raise ValueError("ParallelMultiheadAttention: attn_bias and cache are not supported under tensor "
                             "parallelism; gather the model (TensorParallel.full_model) to decode")

    def _project(self, x: Any, first: int, n: int) -> tuple[list, Any]:
        El = self.num_heads * self.head_dim
        w = self.in_proj_weight.data[first * El:(first + n) * El, :]
        b = None if self.in_proj_bias is None else self.in_proj_bias.data[first * El:(first + n) * El]
        y, ctx = ops.linear_forward(x, w, b)  # (B, T, E) -> (B, T, n E/N)
        return _split_heads(y, n, self.num_heads, self.head_dim), ctx

    def _attend(self, kind: str, ctxs: tuple, q: Any, k: Any, v: Any, attn_mask: Any, key_padding_mask: Any,
                is_causal: bool, need_weights: bool) -> Any:
        xp = get_array_module(q)
        B, L, S, Hl = q.shape[0], q.shape[2], k.shape[2], self.num_heads
        if attn_mask is not None and attn_mask.ndim == 3:  # (B*H, L, S): keep this rank's heads
            H = Hl * self.comm.size
            attn_mask = xp.reshape(xp.reshape(attn_mask, (B, H, L, S))[:, self.heads, ...], (B * Hl, L, S))
        masks = attention_masks(attn_mask, key_padding_mask, B, Hl, L, S, q.dtype)
        p = self.dropout if self.training else 0.0
        o, attn = ops.scaled_dot_product_attention_forward(q, k, v, attn_mask=combine(masks, q.dtype), dropout_p=p,
                                                           is_causal=is_causal, generator=self.generator)
        o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (B, L, Hl * self.head_dim))  # (B, Hl, L, D) -> (B, L, E/N)
        y, c_out = ops.linear_forward(o, self.out_proj.weight.data)  # partial (B, L, E)
        y, c_red = ops.reduce_from_group_forward(y, self.comm)
        c_bias = None
        if self.out_proj.bias is not None:
            y, c_bias = ops.add_forward(y, self.out_proj.bias.data)
        self.save_for_backward((kind, ctxs, attn, c_out, c_red, c_bias))
        self.attn_weights = attn.saved.probs if need_weights else None  # (B, H/N, L, S): this rank's heads
        return y

    def backward(self, dy: Any) -> Any:
        """dL/dy (B, L, E) -> dx (self-attention) or (dx, dmemory) (cross-attention)."""
        kind, ctxs, attn, c_out, c_red, c_bias = self.saved()
        xp = get_array_module(dy)
        B, L = dy.shape[0], dy.shape[1]
        if c_bias is not None:
            dy, db = ops.add_backward(dy, c_bias)  # forward: y = sum_r y_r + b_o
            self.out_proj.bias.accumulate(db)
        dy = ops.reduce_from_group_backward(dy, c_red)
        do, dwo, _ = ops.linear_backward(dy, c_out)  # forward: y_r = o_r W_o,r^T
        self.out_proj.weight.accumulate(dwo)
        do = xp.permute_dims(xp.reshape(do, (B, L, self.num_heads, self.head_dim)), (0, 2, 1, 3))
        dq, dk, dv, _ = ops.scaled_dot_product_attention_backward(do, attn)
        if kind == "self":
            c_copy, proj = ctxs
            dx, dw, db_in = ops.linear_backward(_merge_heads([dq, dk, dv]), proj)  # [q|k|v]_r = x W_r^T + b_r
            self._accumulate([dw], [db_in])
            return ops.copy_to_group_backward(dx, c_copy)  # forward: x_r = x
        c_x, proj_q, c_m, proj_kv = ctxs
        dx, dwq, dbq = ops.linear_backward(_merge_heads([dq]), proj_q)
        dmem, dwkv, dbkv = ops.linear_backward(_merge_heads([dk, dv]), proj_kv)
        self._accumulate([dwq, dwkv], [dbq, dbkv])
        return ops.copy_to_group_backward(dx, c_x), ops.copy_to_group_backward(dmem, c_m)

    def _accumulate(self, dweights: list, dbiases: list) -> None:
        xp = get_array_module(dweights[0])
        self.in_proj_weight.accumulate(dweights[0] if len(dweights) == 1 else xp.concat(dweights, axis=0))
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(dbiases[0] if len(dbiases) == 1 else xp.concat(dbiases, axis=0))


def gather_shard(comm: Any, data: Any, axis: int, blocks: int) -> np.ndarray:
    """The full host array of a parameter (or its Adam moments) cut as (axis, blocks), from every rank's slice."""
    pieces = comm.allgather(backend.to_numpy(data))  # (N, *local shape)
    step = pieces.shape[1 + axis] // blocks
    parts = []
    for b in range(blocks):
        for r in range(comm.size):
            index = [slice(None)] * (pieces.ndim - 1)
            index[axis] = slice(b * step, (b + 1) * step)
            parts.append(pieces[r][tuple(index)])
    return np.concatenate(parts, axis=axis)


def _check_feed_forward(rng: Any) -> ModuleCheck:
    ff = FeedForward(4, 6, dropout=0.3, activation="gelu_tanh", dtype="float64")
    return ModuleCheck(ParallelFeedForward(ff, Communicator.single()), (rng.normal(size=(2, 3, 4)),))


def _check_self_attention(rng: Any) -> ModuleCheck:
    mha = MultiheadAttention(4, 2, dropout=0.3, dtype="float64")
    mha.in_proj_bias.data = backend.asarray(rng.normal(size=12) * 0.1)
    m = ParallelMultiheadAttention(mha, Communicator.single())
    return ModuleCheck(CallAs(m, "self_attention"), (rng.normal(size=(2, 3, 4)),),
                       {"key_padding_mask": padding_mask(2, 3), "is_causal": True})


def _check_cross_attention(rng: Any) -> ModuleCheck:
    m = ParallelMultiheadAttention(MultiheadAttention(4, 2, dtype="float64"), Communicator.single())
    per_head = backend.asarray(rng.random(size=(2 * 2, 3, 5)) < 0.3)  # (B*H, L, S): the per-head mask path
    return ModuleCheck(CallAs(m, "cross_attention"), (rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))),
                       {"attn_mask": per_head, "key_padding_mask": padding_mask(2, 5)})


register_module_check("tensor_parallel.FeedForward", _check_feed_forward)
register_module_check("tensor_parallel.self_attention", _check_self_attention)
register_module_check("tensor_parallel.cross_attention", _check_cross_attention)
