"""Batches for the examples: random windows of a character stream, and the digit-reversal task.

Batches are built on the host with NumPy (data preparation, not op code) and
copied to the current backend once. Randomness comes from a
:class:`~nptransformer.backend.Generator`, whose state a checkpoint saves, so
a resumed run draws the very batches an uninterrupted one would have.

>>> from nptransformer.backend import Generator
>>> task = ReversalTask(min_len=3, max_len=5)
>>> (src, tgt_in), tgt_out = task.batch(Generator(0), batch_size=2)
>>> task.to_text(src[0]), task.to_text(tgt_out[0])   # tgt_out: the reversed digits, then EOS
('8 6 5', '5 6 8 <eos>')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks, backend
from .backend import Generator, to_numpy


def char_batch(data: np.ndarray, block_size: int, batch_size: int, generator: Generator) -> tuple[tuple[Any], Any]:
    """Random windows of a token stream for next-token prediction: ``((x,), y)``, both (B, T) int64.

    ``data`` (N,) host ints; ``y`` is ``x`` shifted one position ahead.
    """
    _checks.check_positive_int("block_size", block_size)
    _checks.check_positive_int("batch_size", batch_size)
    if data.ndim != 1 or len(data) <= block_size:
        raise ValueError(f"data must be a 1-D stream longer than block_size={block_size}, got shape {data.shape}")
    with backend.use("numpy"):  # start offsets index host data
        starts = generator.integers(0, len(data) - block_size, (batch_size,))
    windows = data[starts[:, None] + np.arange(block_size + 1)]  # (B, T + 1)
    return (backend.asarray(windows[:, :-1], "int64"),), backend.asarray(windows[:, 1:], "int64")


class ReversalTask:
    """Digit sequences of length ``min_len..max_len`` and their reversals, for the encoder-decoder.

    Vocabulary: PAD=0, BOS=1, EOS=2, digits 0-9 as ids 3-12. Shapes:
    src (B, S) is the digits padded with PAD; the target is
    ``BOS, reversed digits, EOS`` padded, split into the decoder input
    tgt_in (B, T) and the next-token labels tgt_out (B, T) (PAD where the
    loss should ignore them: use ``CrossEntropyLoss(ignore_index=PAD)``).

    Held-out split: a sequence whose position-weighted digit sum
    ``sum_i (i + 1) * d_i`` is divisible by 10 is never drawn for training
    (``held_out=False``) and is the only kind drawn for testing
    (``held_out=True``), so test accuracy measures sequences the model has
    never seen.
    """

    PAD, BOS, EOS = 0, 1, 2
    vocab_size = 13

    def __init__(self, min_len: int = 3, max_len: int = 12):
        _checks.check_positive_int("min_len", min_len)
        _checks.check_positive_int("max_len", max_len)
        if min_len > max_len:
            raise ValueError(f"min_len ({min_len}) must be <= max_len ({max_len})")
        self.min_len, self.max_len = min_len, max_len

    def is_held_out(self, digits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """digits (B, L) 0-9 (entries past each length ignored), lengths (B,) -> (B,) bool: in the test split."""
        positions = np.arange(1, digits.shape[1] + 1)
        weighted = np.where(positions <= lengths[:, None], digits * positions, 0)
        return weighted.sum(axis=1) % 10 == 0

    def sample(self, generator: Generator, batch_size: int, held_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` sequences of the requested split as host arrays: digits (B, max_len), lengths (B,)."""
        _checks.check_positive_int("batch_size", batch_size)
        digits, lengths = np.zeros((0, self.max_len), np.int64), np.zeros(0, np.int64)
        with backend.use("numpy"):
            while len(lengths) < batch_size:  # rejection sampling: about 10% are held out
                d = generator.integers(0, 10, (2 * batch_size, self.max_len))
                n = generator.integers(self.min_len, self.max_len + 1, (2 * batch_size,))
                keep = self.is_held_out(d, n) == held_out
                digits, lengths = np.concatenate([digits, d[keep]]), np.concatenate([lengths, n[keep]])
        return digits[:batch_size], lengths[:batch_size]

    def encode(self, digits: np.ndarray, lengths: np.ndarray) -> tuple[tuple[Any, Any], Any]:
        """Host digits (B, L) and lengths (B,) -> ``((src, tgt_in), tgt_out)`` on the current backend."""
        B, width = len(lengths), int(lengths.max())
        col = np.arange(width)
        valid = col < lengths[:, None]  # (B, S)
        src = np.where(valid, digits[:, :width] + 3, self.PAD)
        # reversed: position j of the output holds digit lengths - 1 - j
        rev_index = np.clip(lengths[:, None] - 1 - col, 0, None)
        rev = np.where(valid, np.take_along_axis(digits[:, :width], rev_index, axis=1) + 3, self.PAD)
        tgt = np.full((B, width + 2), self.PAD, np.int64)
        tgt[:, 0] = self.BOS
        tgt[:, 1:-1] = rev
        tgt[np.arange(B), lengths + 1] = self.EOS
        src, tgt_in, tgt_out = (backend.asarray(a, "int64") for a in (src, tgt[:, :-1], tgt[:, 1:]))
        return (src, tgt_in), tgt_out

    def batch(self, generator: Generator, batch_size: int, held_out: bool = False) -> tuple[tuple[Any, Any], Any]:
        """A random batch ``((src, tgt_in), tgt_out)`` of the training (or held-out) split."""
        return self.encode(*self.sample(generator, batch_size, held_out))

    def to_text(self, ids: Any) -> str:
        """One row of ids (an array of any backend, or a sequence of ints) as text: digits, ``<eos>``;
        PAD and BOS are left out."""
        names = {self.EOS: "<eos>"}
        host = to_numpy(ids) if _checks.is_array(ids) else np.asarray(ids)
        return " ".join(names.get(i, str(i - 3)) for i in host.tolist() if i not in (self.PAD, self.BOS))
