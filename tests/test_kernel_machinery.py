"""The machinery the kernels share (kernels/_rows.py, kernels/_gemm.py), against plain NumPy.

Settings are passed explicitly: tiny blocks and thresholds make these small
arrays really run split, with a last block shorter than the others.
"""

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.kernels import _gemm, _rows

TINY_ROWS = {"block_elements": 6, "whole_elements": 0, "pooled_block_elements": 6, "min_elements": 1}


def test_rowwise_stitches_tuples_and_a_short_last_block(threads):
    x = np.arange(15.0).reshape(5, 3)  # 2 rows of 3 a block: blocks of 2, 2 and 1 rows
    total, doubled = _rows.rowwise(lambda r: (r.sum(axis=-1, keepdims=True), 2 * r), x, settings=TINY_ROWS)
    np.testing.assert_array_equal(total[:, 0], [3.0, 12.0, 21.0, 30.0, 39.0])
    np.testing.assert_array_equal(doubled, 2 * x)


def test_split_rowwise_equals_the_expression_on_the_whole_array(threads, rng):
    x = rng.normal(size=(37, 5))
    y, s = _rows.rowwise(lambda r: (np.tanh(r), r.sum(axis=-1, keepdims=True)), x,
                         settings={"block_elements": 8, "whole_elements": 8, "pooled_block_elements": 12,
                                   "min_elements": 1})
    np.testing.assert_array_equal(y, np.tanh(x))
    np.testing.assert_allclose(s, x.sum(axis=-1, keepdims=True), rtol=1e-14)


def test_rowwise_writes_into_out_and_may_overwrite_its_input(threads, rng):
    x = rng.normal(size=(23, 3))
    want_y, want_s = np.exp(x), x.sum(axis=-1, keepdims=True)
    calls = []

    def body(r, out):
        calls.append(len(r))
        y, s = out
        np.sum(r, axis=-1, keepdims=True, out=s)  # read r ...
        np.exp(r, out=y)  # ... then write over it
        return out

    s = np.empty((23, 1))
    y, total = _rows.rowwise(body, x, settings=TINY_ROWS, out=(x, s))
    assert y is x and total is s
    assert sum(calls) == 23 and max(calls) == 2  # blocks of 6 elements: 2 rows of 3, every row once
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(total, want_s, rtol=1e-14)


def test_over_last_axis_writes_into_out(threads, rng):
    x = rng.normal(size=(3, 5, 4))
    out = np.empty((3, 5, 4))
    assert _rows.over_last_axis(lambda r, out: np.multiply(r, 2.0, out=out), x, settings=TINY_ROWS, out=out) is out
    np.testing.assert_array_equal(out, 2.0 * x)


@pytest.mark.parametrize("shape", [(4,), (0, 3), (2, 0)])
def test_over_last_axis_handles_vectors_and_empty_arrays(shape):
    x = np.ones(shape)
    np.testing.assert_array_equal(_rows.over_last_axis(lambda r: r * 3.0, x, settings=TINY_ROWS), np.full(shape, 3.0))


def test_row_and_column_sums_match_numpy(threads, rng):
    x = rng.normal(size=(6, 7, 9))
    np.testing.assert_allclose(_rows.row_sums(x), x.sum(axis=-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(_rows.column_sums(x), x.sum(axis=(0, 1)), rtol=1e-12)
    y = rng.normal(size=x.shape)
    np.testing.assert_allclose(_rows.column_dots(x, y), (x * y).sum(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(_rows.row_dots(x, y), (x * y).sum(axis=-1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("shape", [(64, 8, 16), (8, 16, 64), (8, 64, 16)], ids=["rows", "columns", "inner"])
@pytest.mark.parametrize("bias", [False, True])
def test_split_matmul_equals_one_product(shape, bias, threads, rng):
    m, k, n = shape
    a, b, c = rng.normal(size=(m, k)), rng.normal(size=(k, n)), rng.normal(size=n)
    expected = a @ b + (c if bias else 0.0)
    np.testing.assert_allclose(_gemm.matmul(a, b, c if bias else None, min_elements=1), expected, rtol=1e-12,
                               atol=1e-12)


def test_split_matmul_reads_transposed_views(threads, rng):
    dy, x = rng.normal(size=(40, 6)), rng.normal(size=(40, 5))  # a weight gradient: dy^T x, K = 40 is the long side
    np.testing.assert_allclose(_gemm.matmul(dy.T, x, min_elements=1), np.einsum("ki,kj->ij", dy, x), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("threads", [3, 4], indirect=True)
def test_inner_split_sums_partials_in_slab_order(threads, rng):
    # Partial products added in completion order would make this differ between calls with 3+ threads.
    a, b = rng.normal(size=(7, 999)), rng.normal(size=(999, 5))
    first = _gemm.matmul(a, b, min_elements=1)
    for _ in range(20):
        np.testing.assert_array_equal(_gemm.matmul(a, b, min_elements=1), first)


def test_split_stacked_matmul_equals_numpy(threads, rng):
    a, b = rng.normal(size=(5, 3, 16, 8)), rng.normal(size=(5, 3, 8, 16))
    np.testing.assert_allclose(_gemm.stacked_matmul(a, b, min_elements=1), np.matmul(a, b), rtol=1e-12, atol=1e-12)
    shared = rng.normal(size=(8, 16))  # b broadcast over the stack
    np.testing.assert_allclose(_gemm.stacked_matmul(a, shared, min_elements=1), np.matmul(a, shared), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 16, 4), (2, 3, 4, 8)), ((16, 4), (4, 8)), ((5, 13, 4), (5, 4, 8))])
def test_chunked_stacked_matmul_is_the_matrix_product(backend_name, a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=a_shape), rng.normal(size=b_shape)
    # rows of 8 where M allows (13 is prime: whole)
    got = backend.to_numpy(_gemm.stacked_matmul(backend.asarray(a), backend.asarray(b), serial_product=8 * 4 * 8))
    np.testing.assert_allclose(got, a @ b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
def test_for_each_parameter_updates_every_item_once(threads, rng):
    from nptransformer.kernels.parameter_slabs import for_each_parameter

    arrays = [rng.normal(size=n) for n in (5, 300, 7, 120, 1)]
    expected = [2 * a + 1 for a in arrays]
    for_each_parameter(lambda a: a.__imul__(2).__iadd__(1), arrays, arrays, min_elements=1)
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)


def test_intercepted_hooks_see_every_op_call_and_are_removed_on_error():
    from nptransformer.kernels import dispatch, ops

    plain = dispatch.forward, dispatch.backward
    seen = []

    def forward_hook(forward, op, *args, **kwargs):
        seen.append(("forward", op))
        return forward(op, *args, **kwargs)

    def backward_hook(backward, dout, ctx):
        seen.append(("backward", ctx.runner.op if hasattr(ctx.runner, "op") else ctx.runner.name))
        return backward(dout, ctx)

    x = np.array([[1.0, 2.0, 3.0]])
    with pytest.raises(RuntimeError, match="inside"):
        with dispatch.intercepted(forward_hook, backward_hook):
            y, ctx = ops.softmax_forward(x)
            dx = ops.softmax_backward(np.ones_like(y), ctx)
            raise RuntimeError("inside")
    assert seen == [("forward", "softmax"), ("backward", "softmax")]
    np.testing.assert_allclose(y, np.exp(x) / np.exp(x).sum(), rtol=1e-15)  # the plain op's result, passed on
    np.testing.assert_allclose(dx, 0.0, atol=1e-15)  # softmax's gradient of a constant upstream is 0
    assert (dispatch.forward, dispatch.backward) == plain
    with dispatch.intercepted(forward_hook):  # one direction only: backward left alone
        assert dispatch.backward is plain[1] and dispatch.forward is not plain[0]
