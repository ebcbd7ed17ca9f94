"""Embedding lookup: row ``ids[...]`` of a (V, C) table.

>>> import numpy as np
>>> from nptransformer.functional import embedding_forward, embedding_backward
>>> weight = np.arange(6.0).reshape(3, 2)
>>> y, ctx = embedding_forward(np.array([[2, 0, 2]]), weight)
>>> y.tolist()
[[[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]]]
>>> embedding_backward(np.ones((1, 3, 2)), ctx).tolist()  # id 2 was used twice
[[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]

Derivation: docs/ops/embedding.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module, scatter_add, zeros
from ..registry import Case, register_op


def embedding_forward(ids: Any, weight: Any, padding_idx: int | None = None) -> tuple[Any, tuple]:
    """y = weight[ids]. Shapes: ids (...) integer, weight (V, C) -> y (..., C), e.g. (B, T) -> (B, T, C).

    ``padding_idx`` (in [-V, V), negative counting from the end as in
    PyTorch): that row receives no gradient. Saves the flattened ids and the
    table's shape, not the table.
    """
    _checks.check_float("weight", weight)
    _checks.check_ndim("weight", weight, (2,))
    vocab, channels = weight.shape
    _checks.check_token_ids("ids", ids, vocab, "token ids")
    if padding_idx is not None:
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not -vocab <= padding_idx < vocab:
            raise ValueError(f"padding_idx must be None or an int in [-{vocab}, {vocab}), got {padding_idx!r}")
        padding_idx %= vocab
    xp = get_array_module(ids, weight)
    flat = xp.reshape(ids, (-1,))  # (N,): take wants 1-D indices
    y = xp.reshape(xp.take(weight, flat, axis=0), tuple(ids.shape) + (channels,))
    return y, (flat, (vocab, channels), padding_idx)


def embedding_backward(dy: Any, ctx: tuple) -> Any:
    """dweight[v] = sum of dy over the positions where ids == v (zero for padding_idx).

    Repeated ids accumulate (scatter-add, not assignment).
    Derivation: docs/ops/embedding.md.
    """
    flat, (vocab, channels), padding_idx = ctx
    xp = get_array_module(dy)
    dy2 = xp.reshape(dy, (-1, channels))  # (..., C) -> (N, C)
    if padding_idx is not None:
        dy2 = xp.where(xp.reshape(flat == padding_idx, (-1, 1)), 0.0, dy2)
    dweight = zeros((vocab, channels), like=dy)
    scatter_add(dweight, flat, dy2)  # forward: y[n] = weight[ids[n]], so dweight[ids[n]] += dy[n]
    return dweight


def _example(rng: Any) -> Case:
    return Case((rng.integers(0, 3, size=(2, 5)), rng.normal(size=(4, 3))), {"padding_idx": 3})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        vocab, channels = draw(t.sides(1, 6)), draw(t.sides(1, 4))
        padding_idx = draw(t.st.sampled_from([None, vocab - 1, -1] if vocab > 1 else [None]))
        # The padding row's zero gradient is a convention (the row is frozen), not the derivative
        # finite differences see, so here ids never use it; tests/ compare it with PyTorch instead.
        ids = draw(t.token_ids(draw(t.shapes(0, 2)), vocab - (padding_idx is not None)))
        return Case((ids, draw(t.float_arrays((vocab, channels)))), {"padding_idx": padding_idx})

    return cases()


register_op("embedding", embedding_forward, embedding_backward, example=_example, cases=_cases, differentiable=(1,))
