"""``TransformerEncoder``, ``TransformerDecoder`` and ``Transformer``, as in torch.nn (batch first)."""

from __future__ import annotations

import copy
import math
from typing import Any

from .. import _checks, backend
from ..registry import ModuleCheck, register_module_check
from . import init
from ._examples import padding_mask
from .module import Module, ModuleList
from .normalization import LayerNorm
from .transformer_layers import TransformerDecoderLayer, TransformerEncoderLayer


def _clones(layer: Module, n: int) -> ModuleList:
    _checks.check_positive_int("num_layers", n)
    return ModuleList([copy.deepcopy(layer) for _ in range(n)])


class TransformerEncoder(Module):
    """A stack of ``num_layers`` copies of ``encoder_layer``, then an optional final ``norm``.

    Shapes: src (B, S, E) -> (B, S, E). Keys: ``layers.0.self_attn.in_proj_weight`` ... ``norm.weight``.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: Module | None = None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Any, mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool | None = None,
                need_weights: bool = False, packing: Any = None) -> Any:
        """src (B, S, E) -> memory (B, S, E); ``need_weights``: each layer's ``self_attn`` keeps ``attn_weights``.

        ``packing``: src and memory are (1, N, E), packed (:meth:`TransformerEncoderLayer.forward`)."""
        x = src
        extra = {} if packing is None else {"packing": packing}
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal),
                      need_weights=need_weights, **extra)
        return self.norm(x) if self.norm is not None else x

    def backward(self, d: Any) -> Any:
        """dL/dmemory (B, S, E) -> dL/dsrc (B, S, E)."""
        if self.norm is not None:
            d = self.norm.backward(d)
        for layer in reversed(list(self.layers)):
            d = layer.backward(d)
        return d


class TransformerDecoder(Module):
    """A stack of ``num_layers`` copies of ``decoder_layer``, then an optional final ``norm``.

    Shapes: tgt (B, T, E), memory (B, S, E) -> (B, T, E).
    """

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Any, memory: Any, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False, need_weights: bool = False,
                cache: Any = None) -> Any:
        """tgt (B, T, E), memory (B, S, E) -> (B, T, E).

        ``need_weights``: every layer's attention modules keep ``attn_weights``.
        ``cache``: a ``KVCache`` with one ``LayerCache`` (with cross-attention)
        per layer, for incremental decoding under ``no_grad``.
        """
        if cache is not None and len(cache.layers) != len(self.layers):
            raise ValueError(f"cache has {len(cache.layers)} layers, the decoder has {len(self.layers)}")
        x = tgt
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=bool(tgt_is_causal),
                      memory_is_causal=memory_is_causal, need_weights=need_weights,
                      cache=None if cache is None else cache.layers[i])
        return self.norm(x) if self.norm is not None else x

    def backward(self, d: Any) -> tuple[Any, Any]:
        """dL/d(output) -> (dL/dtgt, dL/dmemory); memory's gradient is the sum over every layer's cross-attention."""
        if self.norm is not None:
            d = self.norm.backward(d)
        dmemory = None
        for layer in reversed(list(self.layers)):
            d, dm = layer.backward(d)
            dmemory = dm if dmemory is None else dmemory + dm
        return d, dmemory


class Transformer(Module):
    """The encoder-decoder of "Attention Is All You Need", as ``torch.nn.Transformer(batch_first=True)``.

    Shapes: src (B, S, E), tgt (B, T, E) -> (B, T, E). Both stacks end in a
    LayerNorm (``encoder.norm``, ``decoder.norm``), as torch builds them.
    Every parameter with 2 or more axes is initialised xavier-uniform, as
    torch's ``_reset_parameters`` does.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: Any = "relu",
                 layer_norm_eps: float = 1e-5, batch_first: bool = True, norm_first: bool = False, bias: bool = True,
                 dtype: Any = "float32", generator: Any = None):
        super().__init__()
        layer_args = dict(dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
                          layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias, dtype=dtype)
        self.encoder = TransformerEncoder(TransformerEncoderLayer(d_model, nhead, **layer_args), num_encoder_layers,
                                          LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        self.decoder = TransformerDecoder(TransformerDecoderLayer(d_model, nhead, **layer_args), num_decoder_layers,
                                          LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():
            if len(p.shape) > 1:
                init.xavier_uniform_(p, generator=generator)

    def forward(self, src: Any, tgt: Any, src_mask: Any = None, tgt_mask: Any = None, memory_mask: Any = None,
                src_key_padding_mask: Any = None, tgt_key_padding_mask: Any = None,
                memory_key_padding_mask: Any = None, src_is_causal: bool | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False, need_weights: bool = False) -> Any:
        """src (B, S, E), tgt (B, T, E) -> (B, T, E); ``need_weights``: attention modules keep ``attn_weights``."""
        for name, x in (("src", src), ("tgt", tgt)):
            _checks.check_float(name, x)
            if x.ndim != 3 or x.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (B, T, d_model={self.d_model}), got {tuple(x.shape)}")
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src and tgt must have the same batch size, got {src.shape[0]} and {tgt.shape[0]}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal,
                              need_weights=need_weights)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal, need_weights=need_weights)

    def backward(self, d: Any) -> tuple[Any, Any]:
        """dL/d(output) (B, T, E) -> (dL/dsrc (B, S, E), dL/dtgt (B, T, E))."""
        dtgt, dmemory = self.decoder.backward(d)
        return self.encoder.backward(dmemory), dtgt

    @staticmethod
    def generate_square_subsequent_mask(sz: int, dtype: Any = "float32") -> Any:
        """(sz, sz) additive causal mask: 0 on and below the diagonal, -inf above (as torch's)."""
        rows = backend.arange(sz)
        xp = backend.xp
        above = xp.reshape(rows, (1, sz)) > xp.reshape(rows, (sz, 1))
        return xp.where(above, backend.full((), -math.inf, dtype), backend.full((), 0.0, dtype))


def _check(norm_first: bool) -> Any:
    def build(rng: Any) -> ModuleCheck:
        m = Transformer(4, 2, 1, 2, dim_feedforward=6, dropout=0.2, norm_first=norm_first, dtype="float64")
        return ModuleCheck(m, (rng.normal(size=(2, 4, 4)), rng.normal(size=(2, 3, 4))),
                           {"tgt_is_causal": True, "src_key_padding_mask": padding_mask(2, 4)})

    return build


register_module_check("Transformer.post_ln", _check(False))
register_module_check("Transformer.pre_ln", _check(True))
