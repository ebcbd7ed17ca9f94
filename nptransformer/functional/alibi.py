"""ALiBi (Press et al., 2022): attention with linear biases instead of position embeddings.

Head h adds -m_h |i - j| to the score of query position i and key position j:
the farther the key, the lower its score, at a rate m_h that differs per
head, a geometric sequence 2^(-8/H), 2^(-16/H), ... So no table has to be
learned, and any length works. The bias is a constant (nothing learned),
so it is added like a float mask and has no backward.

>>> import numpy as np
>>> alibi_slopes(4)
[0.25, 0.0625, 0.015625, 0.00390625]
>>> alibi_bias(np.zeros(1), num_heads=2, query_length=2, key_length=3)[0].tolist()   # m = 1/16
[[0.0, -0.0625, -0.125], [-0.0625, 0.0, -0.0625]]
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..backend import get_array_module


def alibi_slopes(num_heads: int) -> list[float]:
    """The per-head rates m_h: 2^(-8 h / H), h = 1..H, for H a power of two.

    Otherwise, as in the paper's code: the slopes of the largest power of two
    n < H, then every other slope of 2n for the remaining heads.
    """
    _checks.check_positive_int("num_heads", num_heads)
    n = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    if n < num_heads:
        slopes += [2.0 ** (-8.0 * h / (2 * n)) for h in range(1, 2 * n + 1, 2)][: num_heads - n]
    return slopes


def alibi_bias(like: Any, num_heads: int, query_length: int, key_length: int, offset: int = 0) -> Any:
    """bias[h, i, j] = -m_h |offset + i - j|, shape (H, Tq, Tk), of ``like``'s dtype and backend.

    ``offset``: the absolute position of the first query (decoding with a
    cache, where the queries are the last Tq of the Tk positions). Under a
    causal mask only j <= i is seen, where this is m_h (j - i).
    """
    _checks.check_positive_int("query_length", query_length)
    _checks.check_positive_int("key_length", key_length)
    _checks.check_int_at_least("offset", offset, 0, "a non-negative integer")
    xp = get_array_module(like)
    dtype = like.dtype
    queries = xp.reshape(backend.arange(query_length, like=like), (1, query_length, 1)) + offset
    keys = xp.reshape(backend.arange(key_length, like=like), (1, 1, key_length))
    closeness = xp.astype(-xp.abs(queries - keys), dtype)  # (1, Tq, Tk), negated as integers: no -0.0
    slopes = backend.zeros((num_heads, 1, 1), like=closeness)  # on like's backend and device
    for h, m in enumerate(alibi_slopes(num_heads)):
        slopes[h, 0, 0] = m
    return slopes * closeness
