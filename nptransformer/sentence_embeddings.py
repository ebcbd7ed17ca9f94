"""Sentence embeddings from an encoder, computed in groups of similar length instead of one padded batch.

A batch of sentences padded to its longest spends much of its work on
padding: 32 sentences of 8 to 40 tokens hold 799 real tokens in 1,280
padded positions, and every linear, norm and GELU of every layer runs over
all 1,280. :func:`sentence_embeddings` sorts the sentences by length and
cuts them into groups, each padded only to its own longest; a padded
position changes no real token's result (padded keys get no attention), so
the embeddings are those of the padded batch, to rounding. Where to cut is
an exact minimisation (:func:`length_groups`): the positions computed plus a
fixed cost per group for the per-op overhead of one more forward.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks
from .backend import asarray, get_array_module, to_numpy, zeros
from .grad_mode import no_grad
from .pretrained import mean_pool

#: A forward of one more group costs about what this many more padded positions do: the per-op overhead
#: (some 150 ops for a 6-layer encoder, 10-20 us each) against 0.2 ms a position for MiniLM on 2 cores.
GROUP_COST = 16


def length_groups(lengths: Any, group_cost: float = GROUP_COST) -> list[np.ndarray]:
    """Rows grouped by length so that the padded positions plus ``group_cost`` per group are fewest.

    ``lengths`` (B,) non-negative integers -> a list of index arrays, each
    a group of rows in increasing length (together every row once). A group
    costs its size times its longest length plus ``group_cost``; with the
    rows sorted by length an optimal grouping cuts the sorted order into
    runs, found exactly by dynamic programming over the distinct lengths.

    >>> [g.tolist() for g in length_groups(np.array([30, 5, 6, 31]), group_cost=4)]
    [[1, 2], [0, 3]]
    >>> [g.tolist() for g in length_groups(np.array([30, 5, 6, 31]), group_cost=100)]
    [[1, 2, 0, 3]]
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any():
        raise ValueError(f"lengths must be a 1-D array of non-negative integers, got {lengths!r}")
    if group_cost < 0:
        raise ValueError(f"group_cost must be >= 0, got {group_cost}")
    order = np.argsort(lengths, kind="stable")
    values, counts = np.unique(lengths, return_counts=True)
    if values.size == 0:
        return []
    before = np.concatenate([[0], np.cumsum(counts)])  # rows shorter than values[i]: before[i]
    best = np.zeros(values.size + 1)  # best[j]: the cheapest grouping of the rows of the j shortest lengths
    start = np.zeros(values.size + 1, dtype=np.int64)
    for j in range(1, values.size + 1):
        # the last group holds the lengths values[i..j-1]: (rows in it) x values[j-1] + group_cost
        costs = best[:j] + (before[j] - before[:j]) * float(values[j - 1]) + group_cost
        start[j] = int(np.argmin(costs))
        best[j] = costs[start[j]]
    cuts, j = [], values.size
    while j > 0:
        cuts.append((before[start[j]], before[j]))
        j = start[j]
    return [order[lo:hi] for lo, hi in reversed(cuts)]


def sentence_embeddings(model: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None,
                        normalize: bool = False, group_cost: float = GROUP_COST) -> Any:
    """Mean-pooled sentence embeddings of a padded batch, (B, T) ids and mask -> (B, H), under ``no_grad``.

    The same numbers as ``mean_pool(model(input_ids, token_type_ids,
    attention_mask), attention_mask, normalize)`` (to rounding), computed
    group by group of :func:`length_groups`: row b runs with its first
    ``lengths[b]`` positions, up to its last real token, so left padding
    and holes keep their positions. ``model``: a :class:`~nptransformer.BERT`
    (anything called as ``model(ids, types, mask)`` -> (B, T, H)).
    ``attention_mask``: 1 (or True) for a real token, 0 for padding; a row
    without a real token gets zeros. ``normalize``: unit L2 rows, so dot
    products are cosine similarities.
    """
    _checks.check_array("input_ids", input_ids)
    _checks.check_array("attention_mask", attention_mask)
    if input_ids.ndim != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"input_ids and attention_mask must both have shape (B, T), got {tuple(input_ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    if token_type_ids is not None and tuple(token_type_ids.shape) != tuple(input_ids.shape):
        raise ValueError(f"token_type_ids must have input_ids' shape {tuple(input_ids.shape)}, "
                         f"got {tuple(token_type_ids.shape)}")
    xp = get_array_module(input_ids)
    real = to_numpy(attention_mask) != 0  # (B, T)
    B, T = real.shape
    lengths = np.where(real.any(axis=1), T - np.argmax(real[:, ::-1], axis=1), 0)  # last real token + 1
    groups = [g for g in length_groups(lengths, group_cost) if lengths[g[-1]] > 0]
    empty = np.flatnonzero(lengths == 0)
    parts = []
    with no_grad():
        for rows in groups:
            L = int(lengths[rows[-1]])
            index = asarray(rows)
            ids, mask = (xp.take(a, index, axis=0)[:, :L] for a in (input_ids, attention_mask))
            types = None if token_type_ids is None else xp.take(token_type_ids, index, axis=0)[:, :L]
            parts.append(mean_pool(model(ids, types, mask), mask, normalize=normalize))
    if not parts:
        raise ValueError("attention_mask has no real token in any row: nothing to embed")
    if empty.size:
        parts.append(zeros((empty.size, parts[0].shape[1]), dtype=parts[0].dtype, like=parts[0]))
    order = np.concatenate(groups + [empty])
    inverse = np.empty(B, dtype=np.int64)
    inverse[order] = np.arange(B)
    return xp.take(xp.concat(parts, axis=0), asarray(inverse), axis=0)
