"""``TransformerEncoderLayer`` and ``TransformerDecoderLayer``, as in torch.nn (batch first).

Post-LN (``norm_first=False``, the 2017 paper) and pre-LN (``norm_first=True``,
GPT-2 and most models since):

    post-LN:  x = norm(x + sublayer(x))        pre-LN:  x = x + sublayer(norm(x))

Backward through a residual block sends the gradient down both paths and
adds them; the order of the backward calls is the reverse of the forward.
docs/backprop-walkthrough.md follows one gradient through both layers.

The sublayers are built by factories, so other families need no surgery
after construction: ``norm=lambda d: RMSNorm(d)`` for RMS norms,
``feed_forward=lambda d: MyGatedFFN(d)`` for another feed-forward. The
default feed-forward is a :class:`~nptransformer.nn.FeedForward`, registered
inline so that the keys stay torch's (``linear1.weight``, not
``feed_forward.linear1.weight``).

For inference both layers take ``need_weights`` (their attention modules then
keep ``attn_weights``) and ``cache``, a ``LayerCache`` (docs/generation.md).
"""

from __future__ import annotations

from typing import Any, Callable

from .. import _checks
from ..registry import ModuleCheck, register_module_check
from .attention import MultiheadAttention
from .dropout import Dropout
from .efficient_attention import EfficientSelfAttention
from .feed_forward import FeedForward
from ._examples import padding_mask
from .module import Module
from .normalization import LayerNorm, RMSNorm


class _Sublayers(Module):
    """The self-attention and feed-forward sublayers both layer types share.

    Submodules are created in torch's order, so state_dict keys come out in
    the same order as torch's: self_attn, [multihead_attn], linear1, dropout,
    linear2 (the inline feed-forward), norm1..n, dropout1..n (n = 3 with
    cross-attention, else 2).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, activation: Any,
                 layer_norm_eps: float, batch_first: bool, norm_first: bool, bias: bool, dtype: Any,
                 cross_attention: bool, norm: Callable[[int], Module] | None,
                 feed_forward: Callable[[int], Module] | None, attn_dropout: float | None):
        super().__init__()
        _checks.check_positive_int("d_model", d_model)
        _checks.check_positive_int("nhead", nhead)
        if d_model % nhead:
            raise ValueError(f"nhead ({nhead}) must divide d_model ({d_model})")
        _checks.check_probability("dropout", dropout)
        self.norm_first = norm_first
        attention = dict(dropout=dropout if attn_dropout is None else attn_dropout, bias=bias,
                         batch_first=batch_first, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, **attention)
        if cross_attention:
            self.multihead_attn = MultiheadAttention(d_model, nhead, **attention)
        if feed_forward is None:
            ff = FeedForward(d_model, dim_feedforward, dropout, activation, bias=bias, dtype=dtype)
        else:
            ff = feed_forward(d_model)
        self.register_inline("feed_forward", ff)
        if norm is None:
            def norm(d: int) -> Module:
                return LayerNorm(d, eps=layer_norm_eps, bias=bias, dtype=dtype)
        n = 3 if cross_attention else 2
        for i in range(1, n + 1):
            setattr(self, f"norm{i}", norm(d_model))
        for i in range(1, n + 1):
            setattr(self, f"dropout{i}", Dropout(dropout))

    def _self_attention(self, x: Any, mask: Any, padding: Any, is_causal: bool, need_weights: bool, cache: Any,
                        packing: Any = None) -> Any:
        extra = {} if packing is None else {"packing": packing}  # attention classes without packing never see it
        y = self.self_attn.self_attention(x, attn_mask=mask, key_padding_mask=padding, is_causal=is_causal,
                                          need_weights=need_weights, cache=None if cache is None else cache.self_attn,
                                          **extra)
        return self.dropout1(y)

    def _self_attention_backward(self, d: Any) -> Any:
        return self.self_attn.backward(self.dropout1.backward(d))  # q, k and v paths already added

    def _feed_forward(self, x: Any, out_dropout: Module) -> Any:
        return out_dropout(self.feed_forward(x))

    def _feed_forward_backward(self, d: Any, out_dropout: Module) -> Any:
        return self.feed_forward.backward(out_dropout.backward(d))


class TransformerEncoderLayer(_Sublayers):
    """Self-attention + feed-forward, each wrapped in a residual and a norm.

    Shapes: src (B, S, E) -> (B, S, E). Submodule names (``self_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``dropout``,
    ``dropout1``, ``dropout2``) match torch's state_dict keys. Beyond
    torch's arguments: ``norm`` (d_model -> a norm Module, default
    LayerNorm), ``feed_forward`` (d_model -> a Module, default
    :class:`FeedForward`), ``attn_dropout`` (the attention probabilities'
    dropout when it differs from ``dropout``, as in BERT), ``attention``
    (None, or the options of an :class:`EfficientSelfAttention` used as
    ``self_attn``, e.g. ``{"kind": "sliding_window", "window": 256}``:
    docs/long-sequences.md).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Any = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True, dtype: Any = "float32", *,
                 norm: Callable[[int], Module] | None = None, feed_forward: Callable[[int], Module] | None = None,
                 attn_dropout: float | None = None, attention: dict | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, dtype, False, norm, feed_forward, attn_dropout)
        if attention is not None:
            if not isinstance(attention, dict):
                raise TypeError(f"attention must be None or a dict of EfficientSelfAttention options, "
                                f"got {type(attention).__name__}")
            self.self_attn = EfficientSelfAttention(d_model, nhead, bias=bias, dtype=dtype, **attention)

    def forward(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool = False,
                need_weights: bool = False, cache: Any = None, packing: Any = None) -> Any:
        """src (B, S, E) -> (B, S, E); masks as in :class:`MultiheadAttention`.

        ``need_weights``: ``self_attn.attn_weights`` keeps the (B, H, S, S)
        probabilities. ``cache`` (a ``LayerCache``, under ``no_grad``): src
        holds only the new positions, and masks cover cached + new keys.
        ``packing`` (:class:`~nptransformer.nn.packing.Packing`, in place of
        ``src_key_padding_mask``): src is (1, N, E), the real tokens of a
        padded batch, and so is the output; every op but the attention runs
        on the N tokens alone.
        """
        x = src
        sa = (src_mask, src_key_padding_mask, is_causal, need_weights, cache, packing)
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), *sa)
            return x + self._feed_forward(self.norm2(x), self.dropout2)
        x = self.norm1(x + self._self_attention(x, *sa))
        return self.norm2(x + self._feed_forward(x, self.dropout2))

    def backward(self, d: Any) -> Any:
        """dL/d(output) (B, S, E) -> dL/dsrc (B, S, E)."""
        if self.norm_first:
            # forward: x1 = x0 + sa(norm1(x0)); x2 = x1 + ff(norm2(x1))
            d1 = d + self.norm2.backward(self._feed_forward_backward(d, self.dropout2))
            return d1 + self.norm1.backward(self._self_attention_backward(d1))
        # forward: x1 = norm1(x0 + sa(x0)); x2 = norm2(x1 + ff(x1))
        dz2 = self.norm2.backward(d)
        d1 = dz2 + self._feed_forward_backward(dz2, self.dropout2)
        dz1 = self.norm1.backward(d1)
        return dz1 + self._self_attention_backward(dz1)


class TransformerDecoderLayer(_Sublayers):
    """Masked self-attention, cross-attention to the encoder memory, feed-forward.

    Shapes: tgt (B, T, E), memory (B, S, E) -> (B, T, E). Submodule names
    (``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``,
    ``norm1..3``, ``dropout``, ``dropout1..3``) match torch's; ``norm``,
    ``feed_forward`` and ``attn_dropout`` as in :class:`TransformerEncoderLayer`.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Any = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True, dtype: Any = "float32", *,
                 norm: Callable[[int], Module] | None = None, feed_forward: Callable[[int], Module] | None = None,
                 attn_dropout: float | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, dtype, True, norm, feed_forward, attn_dropout)

    def forward(self, tgt: Any, memory: Any, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False,
                need_weights: bool = False, cache: Any = None) -> Any:
        """tgt (B, T, E), memory (B, S, E) -> (B, T, E).

        ``need_weights``: ``self_attn.attn_weights`` (B, H, T, T) and
        ``multihead_attn.attn_weights`` (B, H, T, S) keep the probabilities.
        ``cache`` (a ``LayerCache`` with ``cross_attn``, under ``no_grad``):
        tgt holds only the new positions; the memory's keys and values are
        projected on the first call and reused after.
        """
        x = tgt
        sa = (tgt_mask, tgt_key_padding_mask, tgt_is_causal, need_weights, cache)
        ca = (memory, memory_mask, memory_key_padding_mask, memory_is_causal, need_weights,
              None if cache is None else cache.cross_attn)
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), *sa)
            x = x + self._cross_attention(self.norm2(x), *ca)
            return x + self._feed_forward(self.norm3(x), self.dropout3)
        x = self.norm1(x + self._self_attention(x, *sa))
        x = self.norm2(x + self._cross_attention(x, *ca))
        return self.norm3(x + self._feed_forward(x, self.dropout3))

    def _cross_attention(self, x: Any, memory: Any, mask: Any, padding: Any, is_causal: bool, need_weights: bool,
                         cache: Any) -> Any:
        y = self.multihead_attn.cross_attention(x, memory, attn_mask=mask, key_padding_mask=padding,
                                                is_causal=is_causal, need_weights=need_weights, cache=cache)
        return self.dropout2(y)

    def backward(self, d: Any) -> tuple[Any, Any]:
        """dL/d(output) (B, T, E) -> (dL/dtgt (B, T, E), dL/dmemory (B, S, E))."""
        if self.norm_first:
            # forward: x1 = x0 + sa(n1(x0)); x2 = x1 + ca(n2(x1), m); x3 = x2 + ff(n3(x2))
            d2 = d + self.norm3.backward(self._feed_forward_backward(d, self.dropout3))
            dq, dmem = self.multihead_attn.backward(self.dropout2.backward(d2))
            d1 = d2 + self.norm2.backward(dq)
            return d1 + self.norm1.backward(self._self_attention_backward(d1)), dmem
        # forward: x1 = n1(x0 + sa(x0)); x2 = n2(x1 + ca(x1, m)); x3 = n3(x2 + ff(x2))
        dz3 = self.norm3.backward(d)
        d2 = dz3 + self._feed_forward_backward(dz3, self.dropout3)
        dz2 = self.norm2.backward(d2)
        dq, dmem = self.multihead_attn.backward(self.dropout2.backward(dz2))
        dz1 = self.norm1.backward(dz2 + dq)
        return dz1 + self._self_attention_backward(dz1), dmem


def _encoder_check(norm_first: bool) -> Callable[[Any], ModuleCheck]:
    def build(rng: Any) -> ModuleCheck:
        m = TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.2, activation="gelu", norm_first=norm_first,
                                    dtype="float64")
        return ModuleCheck(m, (rng.normal(size=(2, 3, 4)),), {"src_key_padding_mask": padding_mask(2, 3)})

    return build


def _decoder_check(norm_first: bool) -> Callable[[Any], ModuleCheck]:
    def build(rng: Any) -> ModuleCheck:
        m = TransformerDecoderLayer(4, 2, dim_feedforward=6, dropout=0.2, norm_first=norm_first, dtype="float64")
        return ModuleCheck(m, (rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 4))),
                           {"tgt_is_causal": True, "memory_key_padding_mask": padding_mask(2, 4)})

    return build


def _rms_gated_check(rng: Any) -> ModuleCheck:
    m = TransformerEncoderLayer(4, 2, dropout=0.0, norm_first=True, dtype="float64",
                                norm=lambda d: RMSNorm(d, dtype="float64"),
                                feed_forward=lambda d: FeedForward(d, 5, activation="relu", bias=False, dtype="float64"))
    return ModuleCheck(m, (rng.normal(size=(2, 3, 4)),), {"is_causal": True})


register_module_check("EncoderLayer.post_ln", _encoder_check(False))
register_module_check("EncoderLayer.pre_ln", _encoder_check(True))
register_module_check("EncoderLayer.rms_norm_factories", _rms_gated_check)
register_module_check("DecoderLayer.post_ln", _decoder_check(False))
register_module_check("DecoderLayer.pre_ln", _decoder_check(True))
