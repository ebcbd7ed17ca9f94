"""Ops evaluated block by block (functional/_blocks.py) give the same numbers as in one piece.

The other op tests use arrays small enough to fit one block; here the block
is shrunk to a few elements so that every row-wise op really runs split,
with a last block shorter than the others.
"""

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.functional import (
    _blocks,
    cross_entropy_backward,
    cross_entropy_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    log_softmax_backward,
    log_softmax_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    softmax_backward,
    softmax_forward,
)


def _run_ops(rng):
    """Forward and backward of every op that uses row blocks, on host arrays; returns host results."""
    a = lambda shape: backend.asarray(rng.normal(size=shape))  # noqa: E731
    x, dy = a((5, 3, 7)), a((5, 3, 7))
    out = []
    for approximate in ("tanh", "none"):
        y, ctx = gelu_forward(x, approximate=approximate)
        out += [y, gelu_backward(dy, ctx)]
    for fwd, bwd in ((softmax_forward, softmax_backward), (log_softmax_forward, log_softmax_backward)):
        y, ctx = fwd(x, axis=-1)
        out += [y, bwd(dy, ctx)]
    y, ctx = layer_norm_forward(x, a((7,)), a((7,)))
    out += [y, *layer_norm_backward(dy, ctx)]
    target = rng.integers(0, 7, size=(5, 3))
    target[1, 2] = -100
    for smoothing, reduction in ((0.0, "mean"), (0.1, "none")):
        loss, ctx = cross_entropy_forward(x, backend.asarray(target), label_smoothing=smoothing, reduction=reduction)
        dloss = 1.0 if reduction == "mean" else a((5, 3))
        out += [loss, cross_entropy_backward(dloss, ctx)]
    q, k, v = a((2, 3, 16, 2)), a((2, 3, 16, 2)), a((2, 3, 16, 2))
    o, ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
    out += [o, *scaled_dot_product_attention_backward(a((2, 3, 16, 2)), ctx)]
    return [backend.to_numpy(r) for r in out]


def test_blocked_ops_equal_unblocked(backend_name, monkeypatch):
    whole = _run_ops(np.random.default_rng(0))
    monkeypatch.setattr(_blocks, "WHOLE_ELEMENTS", 0)  # split even these small arrays
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 16)  # 2 rows of 7 a block; 15 rows -> 8 blocks
    monkeypatch.setattr(_blocks, "SERIAL_PRODUCT", 256)  # attention's 16 x 2 x 16 products: chunks of 8 rows
    split = _run_ops(np.random.default_rng(0))
    assert len(split) == len(whole)
    for i, (s, w) in enumerate(zip(split, whole)):
        np.testing.assert_allclose(s, w, rtol=1e-13, atol=1e-15, err_msg=f"result {i}")


def test_rowwise_stitches_tuples_and_a_short_last_block(monkeypatch):
    monkeypatch.setattr(_blocks, "WHOLE_ELEMENTS", 0)
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 6)  # 2 rows of 3 a block
    x = np.arange(15.0).reshape(5, 3)
    total, doubled = _blocks.rowwise(lambda r: (r.sum(axis=-1, keepdims=True), 2 * r), x)
    np.testing.assert_array_equal(total[:, 0], [3.0, 12.0, 21.0, 30.0, 39.0])
    np.testing.assert_array_equal(doubled, 2 * x)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 16, 4), (2, 3, 4, 8)), ((16, 4), (4, 8)), ((5, 13, 4), (5, 4, 8))])
def test_stacked_matmul_is_the_matrix_product(backend_name, monkeypatch, a_shape, b_shape):
    monkeypatch.setattr(_blocks, "SERIAL_PRODUCT", 8 * 4 * 8)  # rows of 8 where M allows (13 is prime: whole)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=a_shape), rng.normal(size=b_shape)
    got = backend.to_numpy(_blocks.stacked_matmul(backend.asarray(a), backend.asarray(b)))
    np.testing.assert_allclose(got, a @ b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(4,), (0, 3), (2, 0)])
def test_over_last_axis_handles_vectors_and_empty_arrays(shape):
    x = np.ones(shape)
    np.testing.assert_array_equal(_blocks.over_last_axis(lambda r: r * 3.0, x), np.full(shape, 3.0))
