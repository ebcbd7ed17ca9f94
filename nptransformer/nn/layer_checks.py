"""Small float64 instances of every layer, registered for the gradient check.

Dropout layers are checked in training mode: the checker restores the
default generator before every forward, so each forward draws the same mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..registry import ModuleCheck, register_module_check


def _x(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape)


def _padding(B: int, S: int) -> np.ndarray:
    """Pad the tail of every batch row but the first (never a fully padded row)."""
    mask = np.zeros((B, S), dtype=bool)
    for b in range(1, B):
        mask[b, S - b:] = True
    return mask


def _linear(rng: Any) -> ModuleCheck:
    from .linear import Linear

    return ModuleCheck(Linear(4, 3, dtype="float64"), (_x(rng, 2, 3, 4),))


def _embedding(rng: Any) -> ModuleCheck:
    from .embedding import Embedding

    # id 0 is padding: torch's rule gives its row no gradient, which differs from the true derivative
    ids = backend.asarray(np.array([[1, 3, 3], [2, 1, 4]]))
    return ModuleCheck(Embedding(5, 3, padding_idx=0, dtype="float64"), (ids,), wrt=())


def _layer_norm(rng: Any) -> ModuleCheck:
    from .normalization import LayerNorm

    m = LayerNorm(5, dtype="float64")
    m.weight.data = backend.asarray(rng.normal(size=5))
    m.bias.data = backend.asarray(rng.normal(size=5))
    return ModuleCheck(m, (_x(rng, 2, 3, 5),))


def _rms_norm(rng: Any) -> ModuleCheck:
    from .normalization import RMSNorm

    m = RMSNorm(5, dtype="float64")
    m.weight.data = backend.asarray(rng.normal(size=5))
    return ModuleCheck(m, (_x(rng, 2, 3, 5),))


def _dropout(rng: Any) -> ModuleCheck:
    from .dropout import Dropout

    return ModuleCheck(Dropout(0.4), (_x(rng, 3, 4),))


def _gelu(rng: Any) -> ModuleCheck:
    from .activation import GELU

    return ModuleCheck(GELU("tanh"), (_x(rng, 3, 4),))


def _mha_self(rng: Any) -> ModuleCheck:
    from .attention import MultiheadAttention

    m = MultiheadAttention(4, 2, dropout=0.3, dtype="float64")
    m.in_proj_bias.data = backend.asarray(rng.normal(size=12) * 0.1)
    B, T = 2, 3
    x = backend.asarray(_x(rng, B, T, 4))
    return ModuleCheck(_SelfAttention(m), (x,), {"key_padding_mask": backend.asarray(_padding(B, T)), "is_causal": True})


def _mha_cross(rng: Any) -> ModuleCheck:
    from .attention import MultiheadAttention

    m = MultiheadAttention(4, 2, dtype="float64")
    mask = np.zeros((3, 5), dtype=bool)
    mask[0, :2] = True
    return ModuleCheck(m, (_x(rng, 2, 3, 4), _x(rng, 2, 5, 4), _x(rng, 2, 5, 4)),
                       {"attn_mask": backend.asarray(mask), "key_padding_mask": backend.asarray(_padding(2, 5))})


def _encoder_layer(rng: Any, norm_first: bool) -> ModuleCheck:
    from .transformer_layers import TransformerEncoderLayer

    m = TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.2, activation="gelu", norm_first=norm_first, dtype="float64")
    return ModuleCheck(m, (_x(rng, 2, 3, 4),), {"src_key_padding_mask": backend.asarray(_padding(2, 3))})


def _decoder_layer(rng: Any, norm_first: bool) -> ModuleCheck:
    from .transformer_layers import TransformerDecoderLayer

    m = TransformerDecoderLayer(4, 2, dim_feedforward=6, dropout=0.0, norm_first=norm_first, dtype="float64")
    return ModuleCheck(_FirstOutputOnly(m), (_x(rng, 2, 3, 4), _x(rng, 2, 4, 4)),
                       {"tgt_is_causal": True, "memory_key_padding_mask": backend.asarray(_padding(2, 4))})


def _transformer(rng: Any, norm_first: bool) -> ModuleCheck:
    from .transformer import Transformer

    m = Transformer(4, 2, 1, 2, dim_feedforward=6, dropout=0.0, norm_first=norm_first, dtype="float64")
    return ModuleCheck(m, (_x(rng, 2, 4, 4), _x(rng, 2, 3, 4)),
                       {"tgt_is_causal": True, "src_key_padding_mask": backend.asarray(_padding(2, 4))})


class _SelfAttention:
    """MultiheadAttention called as self-attention (one array for q, k, v): its gradient is dquery."""

    def __init__(self, mha: Any):
        self.mha = mha

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        return self.mha(x, x, x, **kwargs)[0]

    def backward(self, d: Any) -> Any:
        return self.mha.backward(d)[0]

    def named_parameters(self) -> Any:
        return self.mha.named_parameters()

    def clear_saved(self) -> None:
        self.mha.clear_saved()


class _FirstOutputOnly(_SelfAttention):
    """A two-input module whose backward returns a tuple of both input gradients."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.mha(*args, **kwargs)

    def backward(self, d: Any) -> Any:
        return self.mha.backward(d)


register_module_check("Linear", _linear)
register_module_check("Embedding", _embedding)
register_module_check("LayerNorm", _layer_norm)
register_module_check("RMSNorm", _rms_norm)
register_module_check("Dropout", _dropout)
register_module_check("GELU", _gelu)
register_module_check("MultiheadAttention.self", _mha_self)
register_module_check("MultiheadAttention.cross", _mha_cross)
register_module_check("EncoderLayer.post_ln", lambda rng: _encoder_layer(rng, False))
register_module_check("EncoderLayer.pre_ln", lambda rng: _encoder_layer(rng, True))
register_module_check("DecoderLayer.post_ln", lambda rng: _decoder_layer(rng, False))
register_module_check("DecoderLayer.pre_ln", lambda rng: _decoder_layer(rng, True))
register_module_check("Transformer.post_ln", lambda rng: _transformer(rng, False))
register_module_check("Transformer.pre_ln", lambda rng: _transformer(rng, True))
