"""``T5``: the text-to-text encoder-decoder (Raffel et al., 2020) with relative position buckets.

    memory = encoder(E[src])                               # (B, S) -> (B, S, C), bidirectional buckets
    h = decoder(E[tgt], memory)                            # (B, T) -> (B, T, C), causal buckets
    logits = (h * C^-1/2) E^T        (tied head)           # (B, T, V)
    logits = h W_lm^T                (separate head, v1.1)

No absolute positions anywhere: each stack adds a learned bias per head and
per bucket of key - query distance to its self-attention scores
(:class:`~nptransformer.nn.RelativePositionBias`). Layer norms are RMS norms
without bias, linears have no bias, attention scores are not scaled by
1/sqrt(d_kv). ``feed_forward_proj="gated-gelu"`` selects T5 v1.1's gated-GELU
feed-forward. The arguments are those of Hugging Face's ``T5Config``, and
:func:`nptransformer.load_t5` reads its checkpoints (docs/t5.md).

The decoding interface (``encode``, ``decode``, ``new_cache``,
``tgt_vocab_size``, ``max_target_positions``, ``pad_id``) lets
:func:`~nptransformer.generation.greedy_decode` and ``beam_search`` drive it;
T5 starts decoding from ``decoder_start_token_id`` (the pad id, 0).

>>> import numpy as np
>>> model = T5(vocab_size=11, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2, dropout_rate=0.0)
>>> model(np.array([[3, 4, 5, 1]]), np.array([[0, 6, 7]])).shape
(1, 3, 11)
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..kernels.ops import linear_backward, linear_forward
from ..nn import init
from ..nn.embedding import Embedding
from ..nn.kv_cache import KVCache
from ..nn.linear import Linear
from ..nn.module import Module
from ..registry import ModuleCheck, register_module_check
from .t5_layers import T5Stack, parse_feed_forward_proj


class T5(Module):
    """T5ForConditionalGeneration in nptransformer: ``model(input_ids, decoder_input_ids)`` -> logits (B, T, V).

    Arguments as Hugging Face's ``T5Config``: ``d_kv`` is the head size
    (H d_kv may differ from d_model), ``d_ff`` the feed-forward width,
    ``num_decoder_layers`` defaults to ``num_layers``.
    ``tie_word_embeddings``: the head is the shared table's transpose;
    otherwise it is a separate ``lm_head`` (T5 v1.1). ``scale_decoder_outputs``
    (default: ``tie_word_embeddings``, T5's rule) multiplies the decoder's
    output by d_model^-1/2 before the head. ``max_target_positions`` bounds
    decoding only: relative positions have no table to run out of.

    Submodules: ``shared`` (V, C), ``encoder`` and ``decoder``
    (:class:`~nptransformer.models.t5_layers.T5Stack`), ``lm_head`` (untied).
    """

    def __init__(self, vocab_size: int = 32128, d_model: int = 512, d_kv: int = 64, d_ff: int = 2048,
                 num_layers: int = 6, num_decoder_layers: int | None = None, num_heads: int = 8,
                 relative_attention_num_buckets: int = 32, relative_attention_max_distance: int = 128,
                 dropout_rate: float = 0.1, layer_norm_epsilon: float = 1e-6, feed_forward_proj: str = "relu",
                 tie_word_embeddings: bool = True, scale_decoder_outputs: bool | None = None,
                 pad_token_id: int = 0, decoder_start_token_id: int = 0, initializer_factor: float = 1.0,
                 max_target_positions: int = 512, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_positive_int("vocab_size", vocab_size)
        _checks.check_positive_int("max_target_positions", max_target_positions)
        parse_feed_forward_proj(feed_forward_proj)  # refuse an unknown one before building anything
        num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
        for name, token in (("pad_token_id", pad_token_id), ("decoder_start_token_id", decoder_start_token_id)):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
                raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {token!r}")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.pad_id, self.decoder_start_token_id = pad_token_id, decoder_start_token_id
        self.tie_word_embeddings = tie_word_embeddings
        self.scale_decoder_outputs = tie_word_embeddings if scale_decoder_outputs is None else scale_decoder_outputs
        self._max_target_positions = max_target_positions
        stack = dict(d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                     relative_attention_num_buckets=relative_attention_num_buckets,
                     relative_attention_max_distance=relative_attention_max_distance, dropout=dropout_rate,
                     feed_forward_proj=feed_forward_proj, layer_norm_epsilon=layer_norm_epsilon, dtype=dtype)
        self.shared = Embedding(vocab_size, d_model, dtype=dtype)
        self.encoder = T5Stack(num_layers, decoder=False, **stack)
        self.decoder = T5Stack(num_decoder_layers, decoder=True, **stack)
        self.lm_head = None if tie_word_embeddings else Linear(d_model, vocab_size, bias=False, dtype=dtype)
        self._init_weights(initializer_factor, generator)

    def _init_weights(self, factor: float, generator: Any) -> None:
        """Mesh TensorFlow's initialisation: each projection's std is the inverse root of its fan-in.

        The query's std also carries the 1/sqrt(d_kv) that T5 leaves out of the scores.
        """
        init.normal_(self.shared.weight, 0.0, factor, generator=generator)
        if self.lm_head is not None:
            init.normal_(self.lm_head.weight, 0.0, factor, generator=generator)
        for stack in (self.encoder, self.decoder):
            init.normal_(stack.relative_attention_bias.weight, 0.0, factor * self.d_model ** -0.5, generator=generator)
            for layer in stack.layers:
                for attn in [layer.self_attn] + ([layer.cross_attn] if layer.is_decoder else []):
                    inner = attn.num_heads * attn.d_kv
                    init.normal_(attn.q.weight, 0.0, factor * (self.d_model * attn.d_kv) ** -0.5, generator=generator)
                    for p in (attn.k.weight, attn.v.weight):
                        init.normal_(p, 0.0, factor * self.d_model ** -0.5, generator=generator)
                    init.normal_(attn.o.weight, 0.0, factor * inner ** -0.5, generator=generator)
                for p in layer.feed_forward.parameters():
                    init.normal_(p, 0.0, factor * p.shape[1] ** -0.5, generator=generator)  # (out, in): 1/sqrt(in)

    # -- encoder and decoder ------------------------------------------------------
    def _padding(self, ids: Any, attention_mask: Any) -> Any:
        """(B, S) bool, True = padding: from the attention mask (1 = real token) if given, else ids == pad_id."""
        if attention_mask is None:
            return ids == self.pad_id
        _checks.check_array("attention_mask", attention_mask)
        if tuple(attention_mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask must have the ids' shape {tuple(ids.shape)}, got "
                             f"{tuple(attention_mask.shape)}")
        return attention_mask == 0

    def encode(self, src: Any, attention_mask: Any = None) -> Any:
        """src (B, S) ids -> memory (B, S, C).

        ``attention_mask`` (B, S): 1 for a real token, 0 for padding (as the
        tokenizer returns it); without it, the positions holding ``pad_id`` are padding.
        """
        _checks.check_int("src", src)
        return self.encoder(self.shared(src), key_padding_mask=self._padding(src, attention_mask))

    def decode(self, tgt: Any, memory: Any, src: Any = None, cache: Any = None, attention_mask: Any = None) -> Any:
        """tgt (B, T) ids and memory (B, S, C) -> logits (B, T, V).

        The memory's padding comes from ``attention_mask`` (B, S) or ``src``
        (its pad ids); with neither, every memory position is attended.
        ``cache`` (a KVCache with cross-attention, inside ``no_grad``): tgt
        holds only the new tokens. The target is never masked for padding:
        T5 starts every target with the pad id.
        """
        _checks.check_int("tgt", tgt)
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt and memory must have the same batch size, got {tgt.shape[0]} and {memory.shape[0]}")
        memory_padding = self._padding(src, attention_mask) if src is not None else (
            None if attention_mask is None else attention_mask == 0)
        y = self.decoder(self.shared(tgt), memory=memory, memory_key_padding_mask=memory_padding, cache=cache)
        if self.scale_decoder_outputs:
            y = y * self.d_model ** -0.5  # T5's rescaling before a tied head
        if self.lm_head is not None:
            return self.lm_head(y)
        logits, ctx = linear_forward(y, self.shared.weight.data)  # (B, T, C) @ (C, V)
        self.save_for_backward(ctx)
        return logits

    def forward(self, input_ids: Any, decoder_input_ids: Any, attention_mask: Any = None) -> Any:
        """input_ids (B, S), decoder_input_ids (B, T) -> logits (B, T, V) (teacher forcing).

        ``decoder_input_ids`` are the labels shifted right (:meth:`shift_right`).
        """
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, src=input_ids, attention_mask=attention_mask)

    def backward(self, dlogits: Any) -> None:
        """dL/dlogits (B, T, V) -> accumulates every parameter's gradient."""
        if self.lm_head is not None:
            dy = self.lm_head.backward(dlogits)
        else:
            dy, dtable, _ = linear_backward(dlogits, self.saved())  # forward: logits = y E^T
            self.shared.weight.accumulate(dtable)
        if self.scale_decoder_outputs:
            dy = dy * self.d_model ** -0.5
        dtgt, dmemory = self.decoder.backward(dy)
        self.shared.backward(dtgt)  # the decoder's lookup was the later one: its context is on top
        self.shared.backward(self.encoder.backward(dmemory))
        return None

    def shift_right(self, labels: Any) -> Any:
        """labels (B, T) -> decoder inputs (B, T): decoder_start_token_id, then labels[:, :-1] (-100 -> pad_id)."""
        _checks.check_int("labels", labels)
        xp = backend.get_array_module(labels)
        start = backend.full((labels.shape[0], 1), self.decoder_start_token_id, dtype=labels.dtype, like=labels)
        shifted = xp.concat([start, labels[:, :-1]], axis=1)
        return xp.where(shifted == -100, backend.full((), self.pad_id, dtype=labels.dtype, like=labels), shifted)

    # -- the decoding interface (nptransformer.generation.interface) --------------
    @property
    def tgt_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def max_target_positions(self) -> int:
        """The longest target decoding may produce (a bound of the caches, not of the positions)."""
        return self._max_target_positions

    def new_cache(self, capacity: int) -> KVCache:
        """An empty KVCache for the decoder (self- and cross-attention) with room for ``capacity`` positions."""
        return KVCache(self.decoder.num_layers, capacity, cross_attention=True)


def _check(feed_forward_proj: str, tied: bool) -> Any:
    def build(rng: Any) -> ModuleCheck:
        model = T5(vocab_size=7, d_model=4, d_kv=3, d_ff=6, num_layers=2, num_decoder_layers=1, num_heads=2,
                   relative_attention_num_buckets=6, relative_attention_max_distance=5, dropout_rate=0.1,
                   feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied, dtype="float64")
        src = backend.asarray([[3, 4, 5, 6, 1], [2, 5, 1, 0, 0]], dtype="int64")
        tgt = backend.asarray([[0, 3, 2, 6], [0, 4, 1, 0]], dtype="int64")
        return ModuleCheck(model, (src, tgt), wrt=())

    return build


register_module_check("T5.relu_tied", _check("relu", True))
register_module_check("T5.gated_gelu_untied", _check("gated-gelu", False))
