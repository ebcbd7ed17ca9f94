"""``TransformerEncoderLayer`` and ``TransformerDecoderLayer``, as in torch.nn (batch first).

Post-LN (``norm_first=False``, the 2017 paper) and pre-LN (``norm_first=True``,
GPT-2 and most models since):

    post-LN:  x = norm(x + sublayer(x))        pre-LN:  x = x + sublayer(norm(x))

Backward through a residual block sends the gradient down both paths and
adds them; the order of the backward calls is the reverse of the forward.
docs/backprop-walkthrough.md follows one gradient through both layers.

For inference both layers take ``need_weights`` (their attention modules then
keep ``attn_weights``) and ``cache``, a ``LayerCache`` (docs/generation.md).
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..functional.linear_activation import linear_activation_backward, linear_activation_forward
from .activation import GELU, ReLU, make_activation
from .attention import MultiheadAttention
from .dropout import Dropout
from .linear import Linear
from .module import Module
from .normalization import LayerNorm


def _sum(*grads: Any) -> Any:
    """Sum the gradients that are not None (an attention input may have received None)."""
    present = [g for g in grads if g is not None]
    total = present[0]
    for g in present[1:]:
        total = total + g
    return total


def _check_sizes(d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
    _checks.check_positive_int("d_model", d_model)
    _checks.check_positive_int("nhead", nhead)
    _checks.check_positive_int("dim_feedforward", dim_feedforward)
    if d_model % nhead:
        raise ValueError(f"nhead ({nhead}) must divide d_model ({d_model})")
    _checks.check_probability("dropout", dropout)


class _Sublayers(Module):
    """The self-attention and feed-forward sublayers both layer types share.

    Submodules are created in torch's order, so state_dict keys come out in
    the same order as torch's: self_attn, [multihead_attn], linear1, dropout,
    linear2, norm1..n, dropout1..n (n = 3 with cross-attention, else 2).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, activation: Any,
                 layer_norm_eps: float, batch_first: bool, norm_first: bool, bias: bool, dtype: Any,
                 cross_attention: bool):
        super().__init__()
        _check_sizes(d_model, nhead, dim_feedforward, dropout)
        self.norm_first = norm_first
        attention = dict(dropout=dropout, bias=bias, batch_first=batch_first, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, **attention)
        if cross_attention:
            self.multihead_attn = MultiheadAttention(d_model, nhead, **attention)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        n = 3 if cross_attention else 2
        for i in range(1, n + 1):
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        for i in range(1, n + 1):
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = make_activation(activation)

    def _self_attention(self, x: Any, mask: Any, padding: Any, is_causal: bool, need_weights: bool, cache: Any) -> Any:
        y, _ = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=need_weights,
                              average_attn_weights=False, is_causal=is_causal,
                              cache=None if cache is None else cache.self_attn)
        return self.dropout1(y)

    def _self_attention_backward(self, d: Any) -> Any:
        return _sum(*self.self_attn.backward(self.dropout1.backward(d)))  # q, k, v were one array: add

    def _fused_activation(self) -> str | None:
        """The name linear_activation knows the activation by, when linear1 and it are the library's own modules."""
        if type(self.linear1) is not Linear:
            return None
        if type(self.activation) is ReLU:
            return "relu"
        if type(self.activation) is GELU:
            return "gelu_tanh" if self.activation.approximate == "tanh" else "gelu"
        return None

    def _feed_forward(self, x: Any, out_dropout: Module) -> Any:
        fused = self._fused_activation()
        if fused is None:
            h = self.activation(self.linear1(x))
        else:
            # linear1 and the activation as one op, so the (B, T, dim_feedforward) pre-activation
            # is never stored (functional/linear_activation.py); the math is the same.
            bias = self.linear1.bias.data if self.linear1.bias is not None else None
            h, ctx = linear_activation_forward(x, self.linear1.weight.data, bias, fused)
            self.save_for_backward(ctx)
        return out_dropout(self.linear2(self.dropout(h)))

    def _feed_forward_backward(self, d: Any, out_dropout: Module) -> Any:
        d = self.dropout.backward(self.linear2.backward(out_dropout.backward(d)))
        if self._fused_activation() is None:
            return self.linear1.backward(self.activation.backward(d))
        dx, dweight, dbias = linear_activation_backward(d, self.saved())
        self.linear1.weight.accumulate(dweight)
        if self.linear1.bias is not None:
            self.linear1.bias.accumulate(dbias)
        return dx


class TransformerEncoderLayer(_Sublayers):
    """Self-attention + feed-forward, each wrapped in a residual and a LayerNorm.

    Shapes: src (B, S, E) -> (B, S, E). Submodule names (``self_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``dropout``,
    ``dropout1``, ``dropout2``) match torch's state_dict keys.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Any = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True, dtype: Any = "float32"):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, dtype, cross_attention=False)

    def forward(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool = False,
                need_weights: bool = False, cache: Any = None) -> Any:
        """src (B, S, E) -> (B, S, E); masks as in :class:`MultiheadAttention`.

        ``need_weights``: ``self_attn.attn_weights`` keeps the (B, H, S, S)
        probabilities. ``cache`` (a ``LayerCache``, under ``no_grad``): src
        holds only the new positions, and masks cover cached + new keys.
        """
        x = src
        sa = (src_mask, src_key_padding_mask, is_causal, need_weights, cache)
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
    ``norm1..3``, ``dropout``, ``dropout1..3``) match torch's.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Any = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True, dtype: Any = "float32"):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, dtype, cross_attention=True)

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
        y, _ = self.multihead_attn(x, memory, memory, attn_mask=mask, key_padding_mask=padding,
                                   need_weights=need_weights, average_attn_weights=False, is_causal=is_causal,
                                   cache=cache)
        return self.dropout2(y)

    def backward(self, d: Any) -> tuple[Any, Any]:
        """dL/d(output) (B, T, E) -> (dL/dtgt (B, T, E), dL/dmemory (B, S, E))."""
        if self.norm_first:
            # forward: x1 = x0 + sa(n1(x0)); x2 = x1 + ca(n2(x1), m); x3 = x2 + ff(n3(x2))
            d2 = d + self.norm3.backward(self._feed_forward_backward(d, self.dropout3))
            dq, dmem = self._cross_attention_backward(d2)
            d1 = d2 + self.norm2.backward(dq)
            return d1 + self.norm1.backward(self._self_attention_backward(d1)), dmem
        # forward: x1 = n1(x0 + sa(x0)); x2 = n2(x1 + ca(x1, m)); x3 = n3(x2 + ff(x2))
        dz3 = self.norm3.backward(d)
        d2 = dz3 + self._feed_forward_backward(dz3, self.dropout3)
        dz2 = self.norm2.backward(d2)
        dq, dmem = self._cross_attention_backward(dz2)
        dz1 = self.norm1.backward(dz2 + dq)
        return dz1 + self._self_attention_backward(dz1), dmem

    def _cross_attention_backward(self, d: Any) -> tuple[Any, Any]:
        dq, dmem, _ = self.multihead_attn.backward(self.dropout2.backward(d))  # key was value: all of it in dkey
        return dq, dmem
