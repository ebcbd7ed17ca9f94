"""T5's relative position bias: one learned scalar per head and per *bucket* of key - query distance.

    d[i, j] = j - (offset + i)                                # key position minus query position, (Tq, Tk)
    bucket[i, j] = relative_position_bucket(d[i, j])          # an id in [0, num_buckets)
    bias[h, i, j] = table[bucket[i, j], h]                    # table (num_buckets, H) -> bias (H, Tq, Tk)

Small distances get a bucket each; larger ones share log-spaced buckets up to
``max_distance``, beyond which all distances share the last bucket. The bias
is added to the attention scores (``scaled_dot_product_attention``'s ``bias``).

>>> import numpy as np
>>> from nptransformer.functional import relative_position_bucket
>>> d = np.array([-200, -100, -10, -3, 0, 3, 10, 100, 200])
>>> relative_position_bucket(d, bidirectional=True, num_buckets=32, max_distance=128).tolist()
[15, 15, 8, 3, 0, 19, 24, 31, 31]
>>> relative_position_bucket(d, bidirectional=False, num_buckets=32, max_distance=128).tolist()
[31, 30, 10, 3, 0, 0, 0, 0, 0]

Derivation of the backward: docs/ops/relative_position.md.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..backend import get_array_module, scatter_add, zeros
from ..registry import Case, register_op


def _exact_range(num_buckets: int, bidirectional: bool) -> int:
    """How many distances (0, 1, ... max_exact - 1) get a bucket of their own, per direction."""
    return (num_buckets // 2 if bidirectional else num_buckets) // 2


def check_bucket_arguments(num_buckets: Any, max_distance: Any, bidirectional: bool) -> None:
    """Raise unless the bucketing is well defined: at least one exact bucket, and max_distance beyond them."""
    minimum = 4 if bidirectional else 2
    _checks.check_int_at_least("num_buckets", num_buckets, minimum,
                               f"an integer >= {minimum} ({'bidirectional' if bidirectional else 'causal'} buckets)")
    max_exact = _exact_range(num_buckets, bidirectional)
    _checks.check_int_at_least("max_distance", max_distance, max_exact + 1,
                               f"an integer > {max_exact} (the distances with a bucket of their own)")


def relative_position_bucket(relative_position: Any, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> Any:
    """Bucket ids in [0, num_buckets) of integer distances key - query, as T5 (Mesh TensorFlow) defines them.

    Shapes: relative_position (...) integer -> (...) int64.

    - ``bidirectional`` (encoder): half the buckets for keys before the query,
      half (offset by num_buckets / 2) for keys after it. Otherwise (causal
      decoder) only keys at or before the query count; later keys share bucket 0.
    - Of each half, the first ``max_exact`` = half / 2 buckets hold the distances
      0 .. max_exact - 1 exactly; the others split [max_exact, max_distance)
      logarithmically; distances >= max_distance fall in the last bucket.

    The logarithm is evaluated in float32, as in T5's reference and in
    Hugging Face's code, so that the bucket boundaries agree with theirs exactly.
    """
    check_bucket_arguments(num_buckets, max_distance, bidirectional)
    _checks.check_int("relative_position", relative_position)
    xp = get_array_module(relative_position)
    rel = xp.astype(relative_position, xp.int64)
    offset = xp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        offset = xp.astype(rel > 0, xp.int64) * num_buckets  # keys after the query use the upper half
        n = xp.abs(rel)
    else:
        n = -xp.minimum(rel, xp.zeros_like(rel))  # keys after the query: distance 0
    max_exact = num_buckets // 2
    # Clipped below at max_exact so the logarithm stays finite; these entries take the exact branch anyway.
    # Python scalars keep the arithmetic in float32 (and on the ids' device).
    ratio = xp.astype(xp.maximum(n, xp.full_like(n, max_exact)), xp.float32) / max_exact
    scaled = xp.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = xp.minimum(max_exact + xp.astype(scaled, xp.int64), xp.full_like(n, num_buckets - 1))  # floor: >= 0
    return offset + xp.where(n < max_exact, n, large)


def relative_positions(query_length: int, key_length: int, offset: int = 0, like: Any = None) -> Any:
    """d[i, j] = j - (offset + i): key position minus query position. Shape (Tq, Tk), int64.

    ``offset`` is the absolute position of the first query (decoding with a cache).
    """
    xp = get_array_module(like)
    queries = xp.reshape(backend.arange(query_length, like=like), (query_length, 1)) + offset
    keys = xp.reshape(backend.arange(key_length, like=like), (1, key_length))
    return keys - queries


def relative_position_bias_forward(table: Any, query_length: int, key_length: int, bidirectional: bool = True,
                                   max_distance: int = 128, offset: int = 0) -> tuple[Any, tuple]:
    """bias[h, i, j] = table[bucket(j - (offset + i)), h]. Shapes: table (num_buckets, H) -> bias (H, Tq, Tk).

    ``bidirectional`` and ``max_distance`` as in :func:`relative_position_bucket`
    (num_buckets is the table's row count); ``offset``: the first query's
    absolute position. Saves the bucket ids (flattened) and the table's shape,
    not the table: the backward does not depend on it.
    """
    _checks.check_float("table", table)
    _checks.check_ndim("table", table, (2,))
    _checks.check_positive_int("query_length", query_length)
    _checks.check_positive_int("key_length", key_length)
    _checks.check_int_at_least("offset", offset, 0, "a non-negative integer")
    xp = get_array_module(table)
    buckets = relative_position_bucket(relative_positions(query_length, key_length, offset, like=table),
                                       bidirectional, table.shape[0], max_distance)  # (Tq, Tk)
    flat = xp.reshape(buckets, (-1,))  # (Tq*Tk,): take wants 1-D indices
    values = xp.reshape(xp.take(table, flat, axis=0), (query_length, key_length, table.shape[1]))  # (Tq, Tk, H)
    return xp.permute_dims(values, (2, 0, 1)), (flat, tuple(table.shape))


def relative_position_bias_backward(dbias: Any, ctx: tuple) -> Any:
    """dtable[b, h] = sum of dbias[h, i, j] over the (i, j) whose distance fell in bucket b.

    The lookup is an embedding of the bucket ids, so its gradient is a
    scatter-add, each bucket collecting every query-key pair it served.
    Derivation: docs/ops/relative_position.md.
    """
    flat, (num_buckets, heads) = ctx
    xp = get_array_module(dbias)
    rows = xp.reshape(xp.permute_dims(dbias, (1, 2, 0)), (-1, heads))  # forward: bias = permute(values) (Tq*Tk, H)
    dtable = zeros((num_buckets, heads), like=dbias)
    scatter_add(dtable, flat, rows)  # forward: values[n] = table[buckets[n]], so dtable[buckets[n]] += rows[n]
    return dtable


def _example(rng: Any) -> Case:
    return Case((rng.normal(size=(8, 2)), 5, 7), {"bidirectional": True, "max_distance": 4, "offset": 1})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        bidirectional = draw(t.st.booleans())
        num_buckets = draw(t.st.integers(4 if bidirectional else 2, 10))
        max_distance = draw(t.st.integers(_exact_range(num_buckets, bidirectional) + 1, 12))
        table = draw(t.float_arrays((num_buckets, draw(t.sides(1, 3)))))
        return Case((table, draw(t.sides(1, 6)), draw(t.sides(1, 6))),
                    {"bidirectional": bidirectional, "max_distance": max_distance,
                     "offset": draw(t.st.integers(0, 4))})

    return cases()


register_op("relative_position_bias", relative_position_bias_forward, relative_position_bias_backward,
            example=_example, cases=_cases)
