"""Sentence embeddings from an encoder: mean-pooled hidden states, computed on the real tokens only.

A batch of sentences padded to its longest spends much of its work on
padding: 32 sentences of 8 to 40 tokens hold 799 real tokens in 1,280
padded positions, and every linear, norm and GELU of every layer would run
over all 1,280. :func:`sentence_embeddings` runs the encoder packed
(``model(..., packed=True)``, :mod:`nptransformer.nn.packing`): the
position-wise work sees the 799 real tokens, the attention each sentence
with its padding masked. The embeddings are those of the padded batch
(measured: bit-identical on the bench's MiniLM-shaped batch).
"""

from __future__ import annotations

from typing import Any

from . import _checks
from .grad_mode import no_grad
from .pretrained import mean_pool


def sentence_embeddings(model: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None,
                        normalize: bool = False) -> Any:
    """Mean-pooled sentence embeddings of a padded batch, (B, T) ids and mask -> (B, H), under ``no_grad``.

    The same numbers as ``mean_pool(model(input_ids, token_type_ids,
    attention_mask), attention_mask, normalize)``, with the encoder run
    packed. ``model``: a :class:`~nptransformer.BERT` (anything called as
    ``model(ids, types, mask, packed=True)`` -> (B, T, H)).
    ``attention_mask``: 1 (or True) for a real token, 0 for padding, left
    or right padding alike; a row without a real token gets zeros (a batch
    without any is refused by :class:`~nptransformer.nn.packing.Packing`).
    ``normalize``: unit L2 rows, so dot products are cosine similarities.
    """
    _checks.check_array("input_ids", input_ids)
    _checks.check_array("attention_mask", attention_mask)
    if input_ids.ndim != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"input_ids and attention_mask must both have shape (B, T), got {tuple(input_ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    with no_grad():
        hidden = model(input_ids, token_type_ids, attention_mask, packed=True)  # (B, T, H), zeros at padding
        return mean_pool(hidden, attention_mask, normalize=normalize)
