"""Encoder-decoder decoding: the source encoded once, the target grown token by token.

:class:`Seq2SeqStepper` holds what a decoding loop reuses across steps: the
encoder memory, the source ids (for the cross-attention padding mask) and the
decoder's :class:`~nptransformer.generation.KVCache` (all through the model's decoding
interface, :mod:`nptransformer.generation.interface`), whose cross-attention
part is the memory projected into keys and values once. :func:`greedy_decode`
and :func:`~nptransformer.generation.beam_search` drive it.

>>> import numpy as np
>>> from nptransformer import Seq2SeqTransformer
>>> model = Seq2SeqTransformer(7, 7, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
...                            dim_feedforward=16, dropout=0.0, max_len=10)
>>> out = greedy_decode(model, np.array([[3, 4, 5]]), max_len=5, bos_id=1, eos_id=2)
>>> out.shape[0], int(out[0, 0]), out.shape[1] <= 6
(1, 1, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import dtype_name, get_array_module, to_numpy
from .inference import check_token_id, inference
from .sampling import check_logits


def check_decoding_args(model: Any, src: Any, max_len: int, bos_id: int, eos_id: int) -> None:
    """The checks greedy and beam search share: src (B, S) ids, max_len, and the special token ids."""
    _checks.check_int("src", src)
    if src.ndim != 2 or src.shape[1] < 1:
        raise ValueError(f"src must have shape (B, S) with S >= 1, got {tuple(src.shape)}")
    _checks.check_int_at_least("max_len", max_len, 1)
    if max_len > model.max_target_positions:
        raise ValueError(f"max_len {max_len} exceeds the model's max_len {model.max_target_positions} (its position "
                         "table)")
    check_token_id("bos_id", bos_id, model.tgt_vocab_size)
    check_token_id("eos_id", eos_id, model.tgt_vocab_size)


class Seq2SeqStepper:
    """Next-token logits for a batch of target prefixes, given one encoded source per row.

    ``src`` (R, S) ids is encoded at construction; ``use_cache`` keeps the
    decoder's keys and values (room for ``capacity`` target positions), else
    each step decodes the whole prefix again. Call inside
    :func:`~nptransformer.generation.inference.inference`.
    """

    def __init__(self, model: Any, src: Any, use_cache: bool, capacity: int):
        self.model, self.src = model, src
        self.memory = model.encode(src)  # (R, S, C), once per source
        self.cache = model.new_cache(capacity) if use_cache else None

    def last_logits(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (R, t) host ids, BOS first -> logits (R, V) for position t, float64 on the host."""
        feed = tokens if self.cache is None else tokens[:, self.cache.length:]
        logits = self.model.decode(backend.asarray(feed), self.memory, self.src, cache=self.cache)
        last = to_numpy(logits[:, -1, :]).astype(np.float64)
        check_logits(last)  # greedy's argmax and beam's log-softmax would turn NaN into token 0
        return last

    def reorder(self, rows: np.ndarray) -> None:
        """Make row i continue what row ``rows[i]`` decoded (beam search); rows (R',) host ints."""
        index = backend.asarray(rows.astype(np.int64))
        xp = get_array_module(self.memory)
        self.memory = xp.take(self.memory, index, axis=0)
        self.src = xp.take(self.src, index, axis=0)
        if self.cache is not None:
            self.cache.reorder(index)


def greedy_decode(model: Any, src: Any, max_len: int, bos_id: int, eos_id: int, pad_id: int | None = None,
                  use_cache: bool = True) -> Any:
    """Greedy translation of src (B, S) ids -> (B, 1 + n) target ids, n <= max_len.

    Each row starts with ``bos_id`` and takes the most probable next token
    until it emits ``eos_id`` or has ``max_len`` tokens after BOS; decoding
    stops when every row has finished. A finished row is filled with
    ``pad_id`` (default: the model's pad_id, else eos_id). Runs in eval mode
    under ``no_grad``; returns an array of src's backend and dtype.
    """
    check_decoding_args(model, src, max_len, bos_id, eos_id)
    pad = pad_id if pad_id is not None else (model.pad_id if model.pad_id is not None else eos_id)
    check_token_id("pad_id", pad, model.tgt_vocab_size)
    B = src.shape[0]
    tokens = np.full((B, 1), bos_id, dtype=np.int64)
    finished = np.zeros(B, dtype=bool)
    with inference(model, src):
        step = Seq2SeqStepper(model, src, use_cache, capacity=max_len)
        for _ in range(max_len):
            new = np.argmax(step.last_logits(tokens), axis=-1)
            new = np.where(finished, pad, new)
            tokens = np.concatenate([tokens, new[:, None]], axis=1)  # (B, t) -> (B, t + 1)
            finished |= new == eos_id
            if finished.all():
                break
        return backend.asarray(tokens, dtype=dtype_name(src.dtype))
