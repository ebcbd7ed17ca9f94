"""Packed sequences: a padded batch's real tokens side by side in one row, for the position-wise work.

A batch padded to its longest sentence spends every linear, norm and
activation on padding too: 32 sentences of 8 to 40 tokens hold 799 real
tokens in 1,280 padded positions. Those ops treat each position on its
own, so they can run on the N real tokens alone, packed as one row
(1, N, E). Only attention mixes positions: there :meth:`Packing.unpack`
lays the projected tokens back out as (B, T, ...) with the padding masked,
the attention runs per sentence as usual, and :meth:`Packing.pack` takes the
real positions out again. The results at real positions are those of the
padded batch; padded positions are never computed.

The backward needs no new formula: ``pack`` copies entries and ``unpack``
copies them back beside zeros, so each is the other's transpose. For
y = pack(x), dx = unpack(dy) (padding gets no gradient: it fed nothing);
for y = unpack(x), dx = pack(dy) (the gradient at padding is dropped: the
zeros there came from no input). MultiheadAttention's backward applies
exactly these two (docs/pretrained.md; checked by the ``BERT.packed``
gradient check and tests/test_sentence_embeddings.py).

>>> import numpy as np
>>> packing = Packing(np.array([[1, 1, 0], [1, 0, 0]]))
>>> packing.num_tokens, packing.key_padding_mask.tolist()
(3, [[False, False, True], [False, True, True]])
>>> x = np.arange(6.0).reshape(2, 3, 1)
>>> packing.pack(x)[..., 0].tolist()
[[0.0, 1.0, 3.0]]
>>> packing.unpack(packing.pack(x))[..., 0].tolist()
[[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import get_array_module, to_numpy


class Packing:
    """Where the real tokens of a padded (B, T) batch sit, and moves between the padded and packed layouts.

    ``attention_mask`` (B, T): nonzero (True) for a real token, 0 for padding,
    as a tokenizer returns it, on any backend. Packed arrays are (1, N, ...)
    with the N real tokens in row-major order (sentence 0's, then
    sentence 1's, ...). Attributes: ``batch_shape`` (B, T), ``num_tokens``
    N, ``key_padding_mask`` (B, T) bool, True at padding (the convention of
    :class:`~nptransformer.nn.MultiheadAttention`), on the mask's backend.
    """

    def __init__(self, attention_mask: Any):
        _checks.check_array("attention_mask", attention_mask)
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must have shape (B, T), got {tuple(attention_mask.shape)}")
        real = to_numpy(attention_mask) != 0
        self.batch_shape = tuple(real.shape)
        self.num_tokens = int(real.sum())
        if self.num_tokens == 0:
            raise ValueError("attention_mask has no real token: nothing to pack")
        self._index = backend.asarray(np.flatnonzero(real))  # (N,) positions in the flattened (B*T,) batch
        # (B*T,): each position's row in the packed tokens, and N (a zero row appended) at padding
        self._source = backend.asarray(np.where(real.reshape(-1), np.cumsum(real.reshape(-1)) - 1, self.num_tokens))
        self.key_padding_mask = backend.asarray(~real)

    def pack(self, x: Any) -> Any:
        """(B, T, ...) -> (1, N, ...): the real positions, in order."""
        if tuple(x.shape[:2]) != self.batch_shape:
            raise ValueError(f"pack: x must have shape {self.batch_shape} + (...), got {tuple(x.shape)}")
        xp = get_array_module(x)
        flat = xp.reshape(x, (-1,) + tuple(x.shape[2:]))
        return xp.expand_dims(xp.take(flat, self._index, axis=0), axis=0)

    def unpack(self, x: Any) -> Any:
        """(1, N, ...) -> (B, T, ...), zeros at the padding: the inverse of :meth:`pack`."""
        if x.ndim < 2 or x.shape[0] != 1 or x.shape[1] != self.num_tokens:
            raise ValueError(f"unpack: x must have shape (1, {self.num_tokens}, ...), got {tuple(x.shape)}")
        xp = get_array_module(x)
        rest = tuple(x.shape[2:])
        rows = xp.concat([x[0, ...], backend.zeros((1,) + rest, like=x)], axis=0)  # (N + 1, ...)
        return xp.reshape(xp.take(rows, self._source, axis=0), self.batch_shape + rest)
