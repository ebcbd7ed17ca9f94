"""Hypothesis strategies for gradient-checking ops, ours and yours.

Importing this module needs hypothesis (``pip install 'nptransformer[test]'``).
Arrays are drawn from a hypothesis-chosen seed rather than element by element:
values stay well conditioned (bounded, optionally away from kinks), examples
stay fast, and a failure still shrinks to a small shape.

>>> from hypothesis import given
>>> from nptransformer import testing as t
>>> from nptransformer.gradcheck import check_grad
>>> from nptransformer.functional import softmax_forward, softmax_backward
>>> @given(t.float_arrays(t.shapes(min_dims=1, max_dims=3)))
... def test_softmax(x):
...     check_grad((softmax_forward, softmax_backward), [x]).raise_if_failed()
>>> test_softmax()
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "st",
    "sides",
    "shapes",
    "broadcastable_shapes",
    "float_arrays",
    "bool_masks",
    "token_ids",
    "seeds",
]


def seeds() -> st.SearchStrategy[int]:
    """Seeds for NumPy generators."""
    return st.integers(0, 2**32 - 1)


def sides(low: int = 1, high: int = 4) -> st.SearchStrategy[int]:
    """One axis length in [low, high]."""
    return st.integers(low, high)


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 4) -> st.SearchStrategy[tuple]:
    """Array shapes with min_dims..max_dims axes, each min_side..max_side long."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def broadcastable_shapes(draw: Any, max_dims: int = 3, max_side: int = 4) -> tuple[tuple, tuple]:
    """A pair of shapes that broadcast together (axes of 1 and missing leading axes)."""
    full = draw(shapes(0, max_dims, 1, max_side))

    def squeeze(shape: tuple) -> tuple:
        drop = draw(st.integers(0, len(shape)))
        kept = shape[drop:]
        return tuple(1 if draw(st.booleans()) else n for n in kept)

    return squeeze(full), squeeze(full)


@st.composite
def float_arrays(
    draw: Any,
    shape: tuple | st.SearchStrategy,
    low: float = -2.0,
    high: float = 2.0,
    min_magnitude: float = 0.0,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Uniform values in [low, high]; with ``min_magnitude`` > 0, |x| >= min_magnitude
    (keeps relu-like kinks out of the finite-difference stencil)."""
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = np.random.default_rng(draw(seeds()))
    x = rng.uniform(low, high, size=shape)
    if min_magnitude > 0:
        sign = np.where(x < 0, -1.0, 1.0)
        x = sign * np.maximum(np.abs(x), min_magnitude)
    return x.astype(dtype)


@st.composite
def bool_masks(draw: Any, shape: tuple, p: float | None = None) -> np.ndarray:
    """Boolean masks (True = masked out); probability ``p`` drawn if not given."""
    if p is None:
        p = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    rng = np.random.default_rng(draw(seeds()))
    return rng.random(size=shape) < p


@st.composite
def token_ids(draw: Any, shape: tuple, vocab_size: int) -> np.ndarray:
    """int64 token ids in [0, vocab_size), with repeats likely (they must accumulate)."""
    rng = np.random.default_rng(draw(seeds()))
    return rng.integers(0, vocab_size, size=shape).astype(np.int64)
