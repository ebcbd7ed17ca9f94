"""``Seq2SeqTransformer``: the encoder-decoder of "Attention Is All You Need" (Vaswani et al., 2017).

    src_x = dropout(E_src[src] * sqrt(C) + P[0..S-1])      # (B, S) -> (B, S, C)
    tgt_x = dropout(E_tgt[tgt] * sqrt(C) + P[0..T-1])      # (B, T) -> (B, T, C)
    h = Transformer(src_x, tgt_x, causal target mask)       # (B, T, C)
    logits = h W_out^T + b_out                              # (B, T, V_tgt)

P is the sinusoidal table (``positional="sinusoidal"``) or a learned one.
With ``pad_id`` set, padding masks are derived from the ids. ``decode`` takes
a ``KVCache`` for incremental decoding (greedy and beam search live in
:mod:`nptransformer.generation`).

>>> import numpy as np
>>> m = Seq2SeqTransformer(10, 10, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
...                        dim_feedforward=16, dropout=0.0, pad_id=0)
>>> m(np.array([[3, 4, 0]]), np.array([[1, 5]])).shape
(1, 2, 10)
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..kernels.ops import linear_backward, linear_forward, sinusoidal_backward, sinusoidal_forward
from ..nn import init
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.kv_cache import KVCache
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.transformer import Transformer
from ..registry import ModuleCheck, register_module_check


class TokenEmbedding(Module):
    """ids (B, T) -> dropout(token(ids) * sqrt(C) + positions) (B, T, C).

    ``token`` may be shared with another TokenEmbedding (its saved contexts
    are stacked, so both backward passes land in the one weight).
    """

    def __init__(self, token: Embedding, max_len: int, positional: str, dropout: float, dtype: Any):
        super().__init__()
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {positional!r}")
        self.token, self.max_len, self.positional = token, max_len, positional
        self.scale = math.sqrt(token.embedding_dim)
        self.position = Embedding(max_len, token.embedding_dim, dtype=dtype) if positional == "learned" else None
        self.dropout = Dropout(dropout)

    def forward(self, ids: Any, offset: int = 0) -> Any:
        """ids (B, T) -> (B, T, C); ``offset`` is the position of ids' first column (decoding with a cache)."""
        T = ids.shape[-1]
        if offset + T > self.max_len:
            raise ValueError(f"sequence length {offset + T} exceeds max_len {self.max_len} (the position table's size)")
        x = self.token(ids) * self.scale
        if self.position is None:
            x, ctx = sinusoidal_forward(x, offset=offset)
            self.save_for_backward(ctx)
        else:
            x = x + self.position(backend.arange(T, like=ids) + offset)
        return self.dropout(x)

    def backward(self, d: Any) -> None:
        """Adds into the token (and learned position) table; ids have no gradient."""
        d = self.dropout.backward(d)
        if self.position is None:
            d = sinusoidal_backward(d, self.saved(d))
        else:
            self.position.backward(backend.get_array_module(d).sum(d, axis=0))  # broadcast over the batch
        self.token.backward(d * self.scale)


class Seq2SeqTransformer(Module):
    """Encoder-decoder model over token ids: ``model(src, tgt)`` -> logits (B, T, tgt_vocab_size).

    ``share_embeddings`` uses one table for source and target (needs equal
    vocabularies); ``tie_output`` makes the output projection the target
    table's transpose (no output bias). ``pad_id`` turns padding into key
    padding masks for the encoder, the decoder and the cross-attention.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 512, nhead: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: Any = "relu", norm_first: bool = False, max_len: int = 512,
                 positional: str = "sinusoidal", share_embeddings: bool = False, tie_output: bool = False,
                 pad_id: int | None = None, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"share_embeddings needs src_vocab_size == tgt_vocab_size, got {src_vocab_size} "
                             f"and {tgt_vocab_size}")
        _checks.check_positive_int("max_len", max_len)
        self.src_vocab_size, self.tgt_vocab_size, self.d_model = src_vocab_size, tgt_vocab_size, d_model
        self.pad_id, self.tie_output = pad_id, tie_output
        src_table = Embedding(src_vocab_size, d_model, dtype=dtype)
        tgt_table = src_table if share_embeddings else Embedding(tgt_vocab_size, d_model, dtype=dtype)
        for table in {id(src_table): src_table, id(tgt_table): tgt_table}.values():
            init.normal_(table.weight, 0.0, d_model ** -0.5, generator=generator)  # x sqrt(C) gives unit scale
        self.src_embed = TokenEmbedding(src_table, max_len, positional, dropout, dtype)
        self.tgt_embed = TokenEmbedding(tgt_table, max_len, positional, dropout, dtype)
        self.transformer = Transformer(d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward,
                                       dropout, activation, norm_first=norm_first, dtype=dtype, generator=generator)
        self.generator = None if tie_output else Linear(d_model, tgt_vocab_size, dtype=dtype)

    def _padding(self, ids: Any) -> Any:
        return None if self.pad_id is None else ids == self.pad_id

    def encode(self, src: Any, need_weights: bool = False) -> Any:
        """src (B, S) ids -> memory (B, S, C); ``need_weights``: encoder self-attention keeps ``attn_weights``."""
        _checks.check_token_ids("src", src, self.src_vocab_size, "source token ids")
        x = self.src_embed(src)
        return self.transformer.encoder(x, src_key_padding_mask=self._padding(src), need_weights=need_weights)

    def decode(self, tgt: Any, memory: Any, src: Any = None, cache: Any = None, need_weights: bool = False) -> Any:
        """tgt (B, T) ids and memory (B, S, C) -> logits (B, T, V_tgt); ``src`` gives the memory's padding.

        ``cache`` (a :class:`~nptransformer.generation.KVCache` with
        cross-attention, inside ``no_grad``): tgt holds only the new tokens,
        at positions cache.length, cache.length + 1, ...; the memory is
        projected into keys and values on the first call only.
        ``need_weights``: the decoder's attention modules keep ``attn_weights``.
        """
        _checks.check_token_ids("tgt", tgt, self.tgt_vocab_size, "target token ids")
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt and src must have the same batch size, got {tgt.shape[0]} and {memory.shape[0]}")
        padding = self._padding(tgt)
        if cache is not None and padding is not None:
            padding = cache.extend_key_padding(padding)  # the keys include every earlier target token
        offset = 0 if cache is None else cache.length
        y = self.transformer.decoder(self.tgt_embed(tgt, offset), memory, tgt_key_padding_mask=padding,
                                     memory_key_padding_mask=self._padding(src) if src is not None else None,
                                     tgt_is_causal=True, need_weights=need_weights, cache=cache)
        if self.generator is not None:
            return self.generator(y)
        logits, ctx = linear_forward(y, self.tgt_embed.token.weight.data)
        self.save_for_backward(ctx)
        return logits

    # -- the decoding interface (nptransformer.generation.interface) --------------
    @property
    def max_target_positions(self) -> int:
        """The longest target the position table covers: ``max_len``."""
        return self.tgt_embed.max_len

    def new_cache(self, capacity: int) -> KVCache:
        """An empty KVCache for the decoder (self- and cross-attention) with room for ``capacity`` positions."""
        return KVCache(self.transformer.decoder.num_layers, capacity, cross_attention=True)

    def forward(self, src: Any, tgt: Any, need_weights: bool = False) -> Any:
        """src (B, S), tgt (B, T) ids -> logits (B, T, tgt_vocab_size) (teacher forcing).

        ``need_weights``: every attention module keeps its ``attn_weights``
        (see :func:`nptransformer.viz.attention_maps`).
        """
        return self.decode(tgt, self.encode(src, need_weights), src, need_weights=need_weights)

    def backward(self, dlogits: Any) -> None:
        """dL/dlogits (B, T, V) -> accumulates every parameter's gradient."""
        if self.generator is not None:
            dy = self.generator.backward(dlogits)
        else:
            dy, dtable, _ = linear_backward(dlogits, self.saved(dlogits))
            self.tgt_embed.token.weight.accumulate(dtable)
        dtgt, dmemory = self.transformer.decoder.backward(dy)
        self.tgt_embed.backward(dtgt)
        self.src_embed.backward(self.transformer.encoder.backward(dmemory))
        return None


def _check(positional: str, share: bool) -> Any:
    def build(rng: Any) -> ModuleCheck:
        model = Seq2SeqTransformer(6, 6, d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                   dim_feedforward=6, dropout=0.2, max_len=8, positional=positional,
                                   share_embeddings=share, tie_output=share, pad_id=0, dtype="float64")
        src = backend.asarray([[1, 2, 3, 4], [5, 1, 0, 0]], dtype="int64")
        tgt = backend.asarray([[1, 3, 2], [4, 0, 0]], dtype="int64")
        return ModuleCheck(model, (src, tgt), wrt=())

    return build


register_module_check("Seq2Seq.sinusoidal", _check("sinusoidal", False))
register_module_check("Seq2Seq.learned_shared", _check("learned", True))
