"""T5's building blocks: unscaled attention with an inner width of its own, pre-RMS-norm layers, the two stacks.

    attention:  softmax(q k^T + bias + mask) v        # no 1/sqrt(d_kv): T5 folds it into the initialisation
                q, k, v = x W_q^T, m W_k^T, m W_v^T    # (B, T, C) -> (B, H, T, d_kv), no biases
                                                       # (H d_kv may differ from C)
    layer:      x = x + dropout(attention(rms_norm(x)))      [+ cross-attention in the decoder]
                x = x + dropout(feed_forward(rms_norm(x)))
    stack:      h = dropout(rms_norm(layers(dropout(x))))   # one relative-position bias shared by every layer

The bias (H, T, S) comes from the stack's :class:`~nptransformer.nn.RelativePositionBias`
(bidirectional buckets in the encoder, causal ones in the decoder); each
layer's backward returns its share of dL/dbias and the stack adds them
before scattering the sum into the bucket table once.
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..kernels import ops
from ..nn.attention_masks import causal_bottom_right
from ..nn.dropout import Dropout
from ..nn.feed_forward import FeedForward
from ..nn.gated_feed_forward import GatedFeedForward
from ..nn.linear import Linear
from ..nn.module import Module, ModuleList
from ..nn.normalization import RMSNorm
from ..nn.relative_position import RelativePositionBias
from ..registry import CallAs, ModuleCheck, register_module_check

# Hugging Face's feed_forward_proj activations -> nptransformer's (gelu_new is GPT-2's tanh approximation).
FEED_FORWARD_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def parse_feed_forward_proj(feed_forward_proj: str) -> tuple[bool, str]:
    """``"relu"``, ``"gated-gelu"``, ... -> (gated, nptransformer activation name), as T5Config reads it.

    ``"gated-gelu"`` means the tanh approximation (``gelu_new``), as in Hugging Face's config.
    """
    gated, name = feed_forward_proj.startswith("gated-"), feed_forward_proj.removeprefix("gated-")
    if feed_forward_proj == "gated-gelu":
        name = "gelu_new"
    if name not in FEED_FORWARD_ACTIVATIONS:
        choices = sorted(FEED_FORWARD_ACTIVATIONS) + [f"gated-{a}" for a in sorted(FEED_FORWARD_ACTIVATIONS)]
        raise ValueError(f"feed_forward_proj must be one of {choices}, got {feed_forward_proj!r}")
    return gated, FEED_FORWARD_ACTIVATIONS[name]


class T5Attention(Module):
    """Multi-head attention as T5 has it: separate q, k, v, o projections without bias, no score scaling.

    Parameters ``q``, ``k``, ``v`` (H d_kv, d_model) and ``o`` (d_model, H d_kv).
    :meth:`self_attention` takes the relative-position ``bias`` (H, L, S);
    :meth:`cross_attention` attends to an encoder's memory without one.
    Boolean masks: True = may NOT attend.
    """

    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout: float = 0.0, dtype: Any = "float32",
                 generator: Any = None):
        super().__init__()
        for name, n in (("d_model", d_model), ("num_heads", num_heads), ("d_kv", d_kv)):
            _checks.check_positive_int(name, n)
        _checks.check_probability("dropout", dropout)
        self.d_model, self.num_heads, self.d_kv = d_model, num_heads, d_kv
        self.dropout, self.generator = dropout, generator
        inner = num_heads * d_kv
        self.q = Linear(d_model, inner, bias=False, dtype=dtype, generator=generator)
        self.k = Linear(d_model, inner, bias=False, dtype=dtype, generator=generator)
        self.v = Linear(d_model, inner, bias=False, dtype=dtype, generator=generator)
        self.o = Linear(inner, d_model, bias=False, dtype=dtype, generator=generator)

    def self_attention(self, x: Any, bias: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                       cache: Any = None) -> Any:
        """x (B, L, C) -> (B, L, C), with ``bias`` (H, L, S) added to the scores; ``backward`` -> (dx, dbias).

        ``key_padding_mask`` (B, S) bool. ``cache`` (an AttentionCache, inside
        ``no_grad``): the new keys and values are appended and the L queries
        are the last L of S positions (``is_causal`` aligned to the bottom right).
        """
        self._check_inputs(x=x)
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        mask = None
        if cache is not None:
            self._check_cache()
            k, v = cache.append(k, v)  # (B, H, S_cached + L, d_kv)
            if is_causal:  # the queries are the last L of S positions (one query sees every key)
                mask = causal_bottom_right(x.shape[1], k.shape[2], like=x) if x.shape[1] > 1 else None
                is_causal = False
        return self._attend("self", q, k, v, _with_padding(mask, key_padding_mask), is_causal, bias)

    def cross_attention(self, x: Any, memory: Any, key_padding_mask: Any = None, cache: Any = None) -> Any:
        """x (B, L, C) attends to memory (B, S, C) -> (B, L, C); ``backward`` -> (dx, dmemory).

        ``cache``: the memory is projected on the first call and its keys and values reused after.
        """
        self._check_inputs(x=x, memory=memory)
        q = self._heads(self.q(x))
        if cache is not None and cache.length:
            k, v = cache.keys, cache.values  # the memory was projected on the first step
        else:
            k, v = self._heads(self.k(memory)), self._heads(self.v(memory))
            if cache is not None:
                self._check_cache()
                cache.append(k, v)
        return self._attend("cross", q, k, v, _with_padding(None, key_padding_mask), False, None)

    def _heads(self, y: Any) -> Any:
        """(B, T, H d_kv) -> (B, H, T, d_kv)."""
        xp = get_array_module(y)
        return xp.permute_dims(xp.reshape(y, (y.shape[0], y.shape[1], self.num_heads, self.d_kv)), (0, 2, 1, 3))

    def _attend(self, kind: str, q: Any, k: Any, v: Any, mask: Any, is_causal: bool, bias: Any) -> Any:
        xp = get_array_module(q)
        p = self.dropout if self.training else 0.0
        o, ctx = ops.scaled_dot_product_attention_forward(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal,
                                                          scale=1.0, generator=self.generator, bias=bias)
        B, L = q.shape[0], q.shape[2]
        o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (B, L, self.num_heads * self.d_kv))  # merge heads
        self.save_for_backward((kind, ctx))
        return self.o(o)

    def _check_inputs(self, **arrays: Any) -> None:
        for name, a in arrays.items():
            _checks.check_float(name, a)
            if a.ndim != 3:
                raise ValueError(f"{name} must have shape (B, T, {self.d_model}), got {tuple(a.shape)}")
            _checks.check_last_dim(name, a, self.d_model, "d_model")
        _checks.check_same_dtype(q_weight=self.q.weight.data, **arrays)

    @staticmethod
    def _check_cache() -> None:
        if is_grad_enabled():
            raise RuntimeError("T5Attention: cache= is for inference; call the model inside nptransformer.no_grad()")

    def backward(self, dy: Any) -> tuple[Any, Any]:
        """dL/dy (B, L, C) -> (dx, dbias) after self-attention, (dx, dmemory) after cross-attention.

        dbias is summed to the bias's shape (None without a bias).
        """
        kind, ctx = self.saved()
        xp = get_array_module(dy)
        do = self.o.backward(dy)  # forward: y = o W_o^T
        B, L = dy.shape[0], dy.shape[1]
        do = xp.permute_dims(xp.reshape(do, (B, L, self.num_heads, self.d_kv)), (0, 2, 1, 3))  # split heads
        dq, dk, dv, dbias = ops.scaled_dot_product_attention_backward(do, ctx)
        # Linear modules pop their contexts last-in first-out: v, k, then q.
        dkv = self.v.backward(self._merge(dv)) + self.k.backward(self._merge(dk))  # forward: k, v = m W_k^T, m W_v^T
        dx = self.q.backward(self._merge(dq))  # forward: q = x W_q^T
        return (dx + dkv, dbias) if kind == "self" else (dx, dkv)

    def _merge(self, g: Any) -> Any:
        """(B, H, T, d_kv) -> (B, T, H d_kv), the inverse of :meth:`_heads`."""
        xp = get_array_module(g)
        return xp.reshape(xp.permute_dims(g, (0, 2, 1, 3)), (g.shape[0], g.shape[2], self.num_heads * self.d_kv))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, d_kv={self.d_kv}, dropout={self.dropout}"


def _with_padding(mask: Any, key_padding_mask: Any) -> Any:
    """A (L, S) boolean mask or None, and a (B, S) key padding mask or None -> one mask for (B, H, L, S) scores."""
    if key_padding_mask is None:
        return mask
    _checks.check_array("key_padding_mask", key_padding_mask)
    xp = get_array_module(key_padding_mask)
    padding = xp.reshape(key_padding_mask, (key_padding_mask.shape[0], 1, 1, key_padding_mask.shape[1]))
    return padding if mask is None else xp.logical_or(padding, mask)


def _feed_forward(d_model: int, d_ff: int, dropout: float, feed_forward_proj: str, dtype: Any) -> Module:
    gated, activation = parse_feed_forward_proj(feed_forward_proj)
    if gated:
        return GatedFeedForward(d_model, d_ff, dropout, activation=activation, bias=False, dtype=dtype)
    return FeedForward(d_model, d_ff, dropout, activation=activation, bias=False, dtype=dtype)


class T5Layer(Module):
    """One T5 block: self-attention, [cross-attention,] feed-forward, each as x + dropout(sublayer(rms_norm(x))).

    Submodules: ``self_attn``, ``norm1``, ``dropout1``; in a decoder layer
    (``cross_attention=True``) ``cross_attn``, ``norm2``, ``dropout2``; then
    ``feed_forward`` and the last norm and dropout (``norm2``/``norm3``).
    """

    def __init__(self, d_model: int, num_heads: int, d_kv: int, d_ff: int, dropout: float = 0.1,
                 feed_forward_proj: str = "relu", layer_norm_epsilon: float = 1e-6, cross_attention: bool = False,
                 dtype: Any = "float32"):
        super().__init__()
        self.is_decoder = cross_attention
        n = 3 if cross_attention else 2
        self.self_attn = T5Attention(d_model, num_heads, d_kv, dropout, dtype)
        if cross_attention:
            self.cross_attn = T5Attention(d_model, num_heads, d_kv, dropout, dtype)
        self.feed_forward = _feed_forward(d_model, d_ff, dropout, feed_forward_proj, dtype)
        for i in range(1, n + 1):
            setattr(self, f"norm{i}", RMSNorm(d_model, eps=layer_norm_epsilon, dtype=dtype))
            setattr(self, f"dropout{i}", Dropout(dropout))

    def forward(self, x: Any, bias: Any, key_padding_mask: Any = None, memory: Any = None,
                memory_key_padding_mask: Any = None, cache: Any = None) -> Any:
        """x (B, T, C), bias (H, T, S) -> (B, T, C). A decoder layer needs ``memory`` (B, S_mem, C).

        ``key_padding_mask`` (B, S) and ``memory_key_padding_mask`` (B, S_mem)
        bool; ``cache``: a LayerCache (inference). ``backward`` returns
        (dx, dbias) in an encoder layer and (dx, dmemory, dbias) in a decoder layer.
        """
        if self.is_decoder and memory is None:
            raise ValueError("memory must be given to a decoder T5Layer (the encoder's output (B, S, C))")
        causal = self.is_decoder  # decoder self-attention sees only the past
        x = x + self.dropout1(self.self_attn.self_attention(self.norm1(x), bias, key_padding_mask, causal,
                                                            cache.self_attn if cache is not None else None))
        if self.is_decoder:
            x = x + self.dropout2(self.cross_attn.cross_attention(self.norm2(x), memory, memory_key_padding_mask,
                                                                  cache.cross_attn if cache is not None else None))
        last = 3 if self.is_decoder else 2
        return x + getattr(self, f"dropout{last}")(self.feed_forward(getattr(self, f"norm{last}")(x)))

    def backward(self, dy: Any) -> tuple:
        """dL/dy -> (dx, dbias) or, in a decoder layer, (dx, dmemory, dbias)."""
        last = 3 if self.is_decoder else 2
        # forward: y = x + dropout(ff(norm(x))); the residual passes dy through unchanged
        dx = dy + getattr(self, f"norm{last}").backward(self.feed_forward.backward(
            getattr(self, f"dropout{last}").backward(dy)))
        dmemory = None
        if self.is_decoder:
            dh, dmemory = self.cross_attn.backward(self.dropout2.backward(dx))
            dx = dx + self.norm2.backward(dh)  # forward: x = x + dropout(cross(norm2(x), memory))
        dh, dbias = self.self_attn.backward(self.dropout1.backward(dx))
        dx = dx + self.norm1.backward(dh)  # forward: x = x + dropout(self_attn(norm1(x)))
        return (dx, dmemory, dbias) if self.is_decoder else (dx, dbias)


class T5Stack(Module):
    """T5's encoder (``decoder=False``) or decoder: relative bias, layers, final RMS norm.

    x (B, T, C) embedded tokens -> hidden states (B, T, C). Submodules:
    ``relative_attention_bias`` (a RelativePositionBias, bidirectional in the
    encoder, causal in the decoder), ``layers`` (T5Layer), ``norm``, and the
    dropouts ``dropout_in`` / ``dropout_out``.
    """

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_kv: int, d_ff: int,
                 relative_attention_num_buckets: int = 32, relative_attention_max_distance: int = 128,
                 dropout: float = 0.1, feed_forward_proj: str = "relu", layer_norm_epsilon: float = 1e-6,
                 decoder: bool = False, dtype: Any = "float32"):
        super().__init__()
        _checks.check_positive_int("num_layers", num_layers)
        self.is_decoder = decoder
        self.relative_attention_bias = RelativePositionBias(relative_attention_num_buckets, num_heads,
                                                            bidirectional=not decoder,
                                                            max_distance=relative_attention_max_distance, dtype=dtype)
        self.dropout_in = Dropout(dropout)
        self.layers = ModuleList([T5Layer(d_model, num_heads, d_kv, d_ff, dropout, feed_forward_proj,
                                          layer_norm_epsilon, cross_attention=decoder, dtype=dtype)
                                  for _ in range(num_layers)])
        self.norm = RMSNorm(d_model, eps=layer_norm_epsilon, dtype=dtype)
        self.dropout_out = Dropout(dropout)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, x: Any, key_padding_mask: Any = None, memory: Any = None, memory_key_padding_mask: Any = None,
                cache: Any = None) -> Any:
        """x (B, T, C) -> (B, T, C). Decoder: ``memory`` (B, S, C) and optionally its padding (B, S).

        ``key_padding_mask`` (B, T) bool, True = padding. ``cache`` (decoder,
        inference): a KVCache; x holds the new positions cache.length, ...
        """
        offset = cache.length if cache is not None else 0
        T = x.shape[1]
        bias = self.relative_attention_bias(T, offset + T, offset=offset)  # (H, T, S): once, for every layer
        h = self.dropout_in(x)
        for i, layer in enumerate(self.layers):
            h = layer(h, bias, key_padding_mask, memory, memory_key_padding_mask,
                      cache.layers[i] if cache is not None else None)
        return self.dropout_out(self.norm(h))

    def backward(self, dy: Any) -> Any:
        """dL/dy (B, T, C) -> dx (encoder) or (dx, dmemory) (decoder); fills every parameter's gradient."""
        dh = self.norm.backward(self.dropout_out.backward(dy))  # forward: y = dropout(norm(h))
        dbias, dmemory = None, None
        for layer in reversed(self.layers):
            grads = layer.backward(dh)
            dh, layer_dbias = grads[0], grads[-1]
            dbias = layer_dbias if dbias is None else dbias + layer_dbias  # every layer added the same bias
            if self.is_decoder:
                dmemory = grads[1] if dmemory is None else dmemory + grads[1]  # every layer read the memory
        self.relative_attention_bias.backward(dbias)
        dx = self.dropout_in.backward(dh)
        return (dx, dmemory) if self.is_decoder else dx


def _check_layer(decoder: bool, feed_forward_proj: str) -> Any:
    def build(rng: Any) -> ModuleCheck:
        layer = T5Layer(4, 2, 3, 6, dropout=0.2, feed_forward_proj=feed_forward_proj, cross_attention=decoder,
                        dtype="float64")
        x, bias = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 3))
        padding = backend.asarray([[False, False, False], [False, False, True]])
        if decoder:
            memory = rng.normal(size=(2, 3, 4))
            # inputs in the order of the backward's gradients (dx, dmemory, dbias), passed by name
            return ModuleCheck(CallAs(layer, keywords=("memory", "bias")), (x, memory, bias),
                               {"memory_key_padding_mask": padding})
        return ModuleCheck(layer, (x, bias), {"key_padding_mask": padding})

    return build


register_module_check("T5Layer.encoder", _check_layer(False, "relu"))
register_module_check("T5Layer.decoder_gated", _check_layer(True, "gated-gelu"))
