"""Key/value caches for incremental decoding.

Decoding token by token with full forwards recomputes the keys and values of
every earlier position at every step: T steps cost O(T^2) projections. Keys
and values of past positions never change (causal attention: a position only
sees the past), so a cache keeps them and each step projects only the new
tokens. Self-attention appends to its cache; cross-attention projects the
encoder memory once and reuses it for every step.

Buffers are preallocated to the longest sequence the decoding can reach and
filled in place. Growing them by concatenation would copy the whole cache at
every step, O(T^2) copying for T tokens; writing a slice copies only the new
positions. The price is memory for positions that may never be reached.

>>> import numpy as np
>>> cache = AttentionCache(capacity=4)
>>> k = np.ones((1, 2, 3, 8))                       # (B, H, T, D): a 3-token prompt
>>> keys, values = cache.append(k, 2 * k)
>>> keys.shape, cache.length
((1, 2, 3, 8), 3)
>>> keys, values = cache.append(k[:, :, :1], k[:, :, :1])   # one decoding step
>>> keys.shape
(1, 2, 4, 8)
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module


class AttentionCache:
    """Keys and values (B, H, T, D) that one attention layer has already computed.

    ``capacity``: the most positions it will hold; buffers of (B, H,
    capacity, D) are allocated on the first :meth:`append` (None: exactly the
    first append's length, right for an encoder memory that is stored once).
    ``length`` is the number of positions held.
    """

    def __init__(self, capacity: int | None = None):
        if capacity is not None:
            _checks.check_positive_int("capacity", capacity)
        self.capacity = capacity
        self.length = 0
        self._k: Any = None
        self._v: Any = None

    def append(self, k: Any, v: Any) -> tuple[Any, Any]:
        """Store k, v (B, H, T_new, D) after the held positions; return all keys and values (B, H, length, D)."""
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape (B, H, T, D), got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        t_new = k.shape[2]
        if self._k is None:
            capacity = t_new if self.capacity is None else self.capacity
            self._k = backend.zeros((k.shape[0], k.shape[1], capacity, k.shape[3]), like=k)
            self._v = backend.zeros((k.shape[0], k.shape[1], capacity, k.shape[3]), like=v)
        buffer_shape = (self._k.shape[0], self._k.shape[1], self._k.shape[3])
        if (k.shape[0], k.shape[1], k.shape[3]) != buffer_shape:
            raise ValueError(f"k must have shape (B, H, T, D) with (B, H, D) = {buffer_shape} as cached, "
                             f"got {tuple(k.shape)}")
        if self.length + t_new > self._k.shape[2]:
            raise ValueError(f"the cache holds at most {self._k.shape[2]} positions; it has {self.length} and got "
                             f"{t_new} more")
        end = self.length + t_new
        self._k[:, :, self.length:end, :] = k
        self._v[:, :, self.length:end, :] = v
        self.length = end
        return self.keys, self.values

    @property
    def keys(self) -> Any:
        """The held keys (B, H, length, D): a view of the buffer, not a copy."""
        return None if self._k is None else self._k[:, :, :self.length, :]

    @property
    def values(self) -> Any:
        """The held values (B, H, length, D): a view of the buffer, not a copy."""
        return None if self._v is None else self._v[:, :, :self.length, :]

    def reorder(self, rows: Any) -> None:
        """Keep batch rows ``rows`` (1-D int array, repeats allowed), in that order: beam search's reshuffle."""
        if self._k is not None:
            xp = get_array_module(self._k)
            self._k = xp.take(self._k, rows, axis=0)
            self._v = xp.take(self._v, rows, axis=0)


class LayerCache:
    """The caches of one Transformer layer: ``self_attn`` and, in a decoder layer, ``cross_attn``.

    The names are those of the layer's attention submodules.
    """

    def __init__(self, capacity: int, cross_attention: bool = False):
        self.self_attn = AttentionCache(capacity)
        self.cross_attn = AttentionCache() if cross_attention else None


class KVCache:
    """Everything a model needs to decode incrementally: one :class:`LayerCache` per layer.

    ``KVCache(num_layers, capacity)`` for a decoder-only model (GPT),
    ``cross_attention=True`` for the decoder of an encoder-decoder. Pass it
    as ``cache=`` to the model's forward (GPT) or ``decode`` (Seq2Seq) inside
    :func:`nptransformer.no_grad`; each call appends its new positions.
    ``length`` is the number of positions already decoded, i.e. the absolute
    position of the next token fed in.

    A decoder whose padding mask comes from token ids (Seq2Seq with
    ``pad_id``) also needs the padding of the tokens fed earlier:
    :meth:`extend_key_padding` keeps it.
    """

    def __init__(self, num_layers: int, capacity: int, cross_attention: bool = False):
        _checks.check_positive_int("num_layers", num_layers)
        self.capacity = capacity
        self.layers = [LayerCache(capacity, cross_attention) for _ in range(num_layers)]
        self.key_padding: Any = None

    @property
    def length(self) -> int:
        """Positions held (the same in every layer)."""
        return self.layers[0].self_attn.length

    def extend_key_padding(self, padding: Any) -> Any:
        """Remember the new tokens' ``padding`` (B, T_new) bool (True = padding); return all of it (B, length + T_new).

        A small (B, T) boolean array, so it is grown by concatenation.
        """
        if self.key_padding is None:
            self.key_padding = padding
        else:
            self.key_padding = get_array_module(padding).concat([self.key_padding, padding], axis=1)
        return self.key_padding

    def reorder(self, rows: Any) -> None:
        """Keep batch rows ``rows`` (1-D int array, repeats allowed) in every layer's caches, in that order."""
        for layer in self.layers:
            layer.self_attn.reorder(rows)
            if layer.cross_attn is not None:
                layer.cross_attn.reorder(rows)
        if self.key_padding is not None:
            self.key_padding = get_array_module(self.key_padding).take(self.key_padding, rows, axis=0)
