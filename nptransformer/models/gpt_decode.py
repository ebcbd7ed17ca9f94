"""GPT's one-token decoding step computed straight from the weights: the forward's math, without its per-op machinery.

A greedy decoding step at batch 1 is about a hundred small operations: per
block two layer norms, four vector-matrix products, the attention of one
query over the cache, GELU and two residual additions. Each product reads
its weight in a few microseconds, and through the layers each operation also
pays its argument checks, the kernel dispatch and the module bookkeeping a
training forward needs (what to save for backward): on the bench's GPT
(4 blocks of width 256) those made the step 1.5 ms where its arithmetic
takes about half a millisecond. :func:`step` computes the same step with the
layers' arrays read directly and the kernels' own block bodies (layer norm,
softmax, the activation), the same formulas the tests check against the
reference. On the bench's GPT, greedy, batch 1, 64 new tokens: 1,064
tokens/s against 667 through the layers (same tokens).

:func:`takes` says when the step applies: inference (``no_grad``, eval
mode), one new token per row, no attention mask or position ids (a plain
batch of equal-length rows), float32 or float64 weights, learned
positions, and blocks of the standard shape (pre-norm
:class:`~nptransformer.nn.TransformerEncoderLayer` with
:class:`~nptransformer.nn.MultiheadAttention`, layer norms and a
:class:`~nptransformer.nn.FeedForward` whose activation is named).
Everything else (the prompt, padded batches, the other positional schemes,
grouped-query or efficient attention, mixtures of experts) goes through
:meth:`GPT.forward <nptransformer.models.GPT.forward>`.

>>> import numpy as np
>>> import nptransformer as npt
>>> from nptransformer.models import GPT
>>> model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=16).eval()
>>> with npt.no_grad():
...     cache = model.new_cache(8)
...     _ = model.forward(np.array([[1, 2, 3]]), cache=cache)        # the prompt, through the layers
...     fast = step(model, np.array([[4]]), cache)                   # one token, straight from the weights
...     cache.layers[0].self_attn.length = cache.layers[1].self_attn.length = 3   # forget it ...
...     slow = model.forward(np.array([[4]]), cache=cache)           # ... and take the same step the long way
>>> bool(np.allclose(fast, slow, rtol=1e-5, atol=1e-6))
True
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks
from ..backend import dtype_name, get_array_module
from ..grad_mode import is_grad_enabled
from ..kernels.activations import ACTIVATION_BLOCKS
from ..kernels.normalization import layer_norm_rows
from ..kernels.softmax import softmax_rows
from ..nn.attention import MultiheadAttention
from ..nn.feed_forward import FeedForward
from ..nn.kv_cache import KVCache
from ..nn.linear import Linear
from ..nn.normalization import LayerNorm, _data
from ..nn.transformer_layers import TransformerEncoderLayer


def takes(model: Any, ids: Any, cache: Any, attention_mask: Any, position_ids: Any) -> bool:
    """Whether :func:`step` computes this decoding step (module docstring); False sends it through the layers."""
    if is_grad_enabled() or model.training or not isinstance(cache, KVCache) or cache.key_padding is not None:
        return False
    if attention_mask is not None or position_ids is not None or model.wpe is None:
        return False
    if getattr(ids, "ndim", 0) != 2 or ids.shape[1] != 1 or cache.length + 1 > model.block_size:
        return False  # the layers raise the errors
    if len(cache.layers) != len(model.blocks) or type(model.ln_f) is not LayerNorm:
        return False
    if dtype_name(model.wte.weight.data.dtype) not in ("float32", "float64"):
        return False  # float16 takes its norms and softmax in float32 through the layers (kernels/half_statistics)
    if model.lm_head is not None and type(model.lm_head) is not Linear:
        return False
    return all(_standard_block(block) for block in model.blocks)


def _standard_block(block: Any) -> bool:
    """A pre-norm encoder layer with plain multi-head attention, layer norms, float linears (not quantized
    ones) and a named activation."""
    if not (type(block) is TransformerEncoderLayer and block.norm_first and type(block.self_attn) is MultiheadAttention
            and type(block.norm1) is LayerNorm and type(block.norm2) is LayerNorm
            and type(block.feed_forward) is FeedForward):
        return False
    ff = block.feed_forward
    return (isinstance(ff.activation, str) and ff.activation in ACTIVATION_BLOCKS
            and all(type(linear) is Linear for linear in (ff.linear1, ff.linear2, block.self_attn.out_proj)))


def step(model: Any, ids: Any, cache: KVCache) -> Any:
    """Logits (B, 1, V) of the next token after ``ids`` (B, 1), appending each block's key and value to ``cache``.

    The same values as ``model.forward(ids, cache=cache)`` (to rounding:
    the products run on (B, C) rows instead of (B, 1, C)); call it where
    :func:`takes` says so.
    """
    _checks.check_token_ids("idx", ids, model.vocab_size, "token ids")
    xp = get_array_module(ids)
    B = ids.shape[0]
    x = xp.take(model.wte.weight.data, ids[:, 0], axis=0) + model.wpe.weight.data[cache.length, :]  # (B, C)
    for block, layer_cache in zip(model.blocks, cache.layers):
        x = x + _attention(block.self_attn, _norm(block.norm1, x), layer_cache.self_attn, B)
        ff = block.feed_forward
        h = ACTIVATION_BLOCKS[ff.activation][0](_linear(ff.linear1, _norm(block.norm2, x)))
        x = x + _linear(ff.linear2, h)
    logits = _times_transposed(_norm(model.ln_f, x), model._head_weight().data)  # (B, V)
    return xp.reshape(logits, (B, 1, logits.shape[-1]))


def _norm(norm: LayerNorm, x: Any) -> Any:
    return layer_norm_rows(x, _data(norm.weight), _data(norm.bias), norm.eps)[0]


def _times_transposed(x: Any, weight: Any) -> Any:
    """x (B, C_in) @ weight^T (C_in, C_out) -> (B, C_out); for B > 1 computed as (weight x^T)^T.

    With a few rows OpenBLAS multiplies the second form faster: greedy decoding at batch 8 on the
    bench's GPT ran at 5,427-5,460 tokens/s against 4,218 (one row: the same either way).
    """
    xp = get_array_module(x)
    if x.shape[0] > 1:
        return xp.matrix_transpose(weight @ xp.matrix_transpose(x))
    return x @ xp.matrix_transpose(weight)


def _affine(x: Any, weight: Any, bias: Any) -> Any:
    """x (B, C_in) @ weight^T + bias -> (B, C_out); bias (C_out,) or None."""
    y = _times_transposed(x, weight)
    if bias is not None:
        y += bias
    return y


def _linear(linear: Any, x: Any) -> Any:
    return _affine(x, linear.weight.data, _data(linear.bias))


def _attention(attn: MultiheadAttention, x: Any, layer_cache: Any, B: int) -> Any:
    """One query per row against the cached keys and its own: x (B, C) -> the attention's output (B, C)."""
    xp = get_array_module(x)
    H, D = attn.num_heads, attn.head_dim
    qkv = _affine(x, attn.in_proj_weight.data, _data(attn.in_proj_bias))  # (B, 3C)
    q, k, v = (xp.reshape(qkv[:, i * H * D:(i + 1) * H * D], (B, H, 1, D)) for i in range(3))
    keys, values = layer_cache.append(k, v)  # (B, H, S, D): the cache and this position
    scores = q @ xp.matrix_transpose(keys)  # (B, H, 1, S)
    scores *= 1.0 / math.sqrt(D)
    if attn.attn_weights is not None:
        attn.attn_weights = None  # as the layer leaves it without need_weights
    out = softmax_rows(scores, -1) @ values  # (B, H, 1, D)
    return _linear(attn.out_proj, xp.reshape(out, (B, H * D)))
