"""What decoding needs from a model: the small interface generation talks to.

Decoding loops never reach into a model's layers. A model they can drive
offers, besides ``train()``/``eval()``:

**Decoder-only** (:class:`DecoderOnlyLM`; :class:`~nptransformer.GPT`):

- ``vocab_size`` and ``max_positions`` (the longest sequence it can see);
- ``new_cache(capacity)``: an empty :class:`~nptransformer.generation.KVCache`
  with room for ``capacity`` positions;
- ``decode(ids, cache=None, attention_mask=None, position_ids=None)``:
  ids (B, T_new) -> logits (B, T_new, V), appending the new positions'
  keys and values to ``cache``.

**Encoder-decoder** (:class:`EncoderDecoderLM`; :class:`~nptransformer.Seq2SeqTransformer`):

- ``tgt_vocab_size``, ``max_target_positions`` and ``pad_id`` (or None);
- ``encode(src)``: src (B, S) ids -> memory (B, S, C), once per source;
- ``new_cache(capacity)``: a cache with self- and cross-attention parts;
- ``decode(tgt, memory, src=None, cache=None)``: tgt (B, T_new) ids ->
  logits (B, T_new, V); ``src`` gives the memory's padding.

A new model family joins greedy, sampled and beam decoding by offering
these; the protocols below are for type checkers and readers, nothing
inherits from them.
"""

from __future__ import annotations

from typing import Any, Protocol


class DecoderOnlyLM(Protocol):
    """A model :func:`~nptransformer.generation.generate` can continue prompts with."""

    vocab_size: int
    max_positions: int

    def new_cache(self, capacity: int) -> Any:
        """An empty KVCache for ``capacity`` positions."""

    def decode(self, ids: Any, cache: Any = None, attention_mask: Any = None, position_ids: Any = None) -> Any:
        """ids (B, T_new) -> logits (B, T_new, V)."""


class EncoderDecoderLM(Protocol):
    """A model :func:`~nptransformer.generation.greedy_decode` and ``beam_search`` can translate with."""

    tgt_vocab_size: int
    max_target_positions: int
    pad_id: int | None

    def encode(self, src: Any) -> Any:
        """src (B, S) ids -> memory (B, S, C)."""

    def new_cache(self, capacity: int) -> Any:
        """An empty KVCache with cross-attention, for ``capacity`` target positions."""

    def decode(self, tgt: Any, memory: Any, src: Any = None, cache: Any = None) -> Any:
        """tgt (B, T_new) ids -> logits (B, T_new, V)."""
