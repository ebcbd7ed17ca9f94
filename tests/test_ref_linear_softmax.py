"""linear, matmul, add, softmax and log_softmax against torch in float64 and closed forms,
including the numerically hard cases (logits of 1e4, -inf entries, all -inf rows)."""

import math

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.functional import (
    add_backward,
    add_forward,
    linear_backward,
    linear_forward,
    log_softmax_backward,
    log_softmax_forward,
    matmul_backward,
    matmul_forward,
    softmax_forward,
)

TOL = 1e-10


def _dev(*arrays):
    return [None if a is None else backend.asarray(a) for a in arrays]


def _host(*arrays):
    return [None if a is None else backend.to_numpy(a) for a in arrays]


def _torch_grads(fn, inputs, dout):
    """torch's fn(*inputs) and the gradient of each input for upstream gradient dout."""
    torch = pytest.importorskip("torch")
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in inputs]
    out = fn(torch, *ts)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(backend_name, rng, lead, with_bias):
    x, w = rng.normal(size=lead + (4,)), rng.normal(size=(3, 4))
    b = rng.normal(size=3) if with_bias else None
    dy = rng.normal(size=lead + (3,))
    y, ctx = linear_forward(*_dev(x, w, b))
    grads = _host(*linear_backward(backend.asarray(dy), ctx))
    ty, tgrads = _torch_grads(lambda torch, x, w, b: torch.nn.functional.linear(x, w, b), (x, w, b), dy)
    np.testing.assert_allclose(backend.to_numpy(y), ty, rtol=TOL, atol=TOL)
    _assert_close(grads, tgrads)


@pytest.mark.parametrize(
    "shape_a, shape_b",
    [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((1, 3, 4), (2, 1, 4, 5))],
)
def test_matmul_with_broadcasting_matches_torch(backend_name, rng, shape_a, shape_b):
    a, b = rng.normal(size=shape_a), rng.normal(size=shape_b)
    c, ctx = matmul_forward(*_dev(a, b))
    dc = rng.normal(size=c.shape)
    grads = _host(*matmul_backward(backend.asarray(dc), ctx))
    tc, tgrads = _torch_grads(lambda torch, a, b: a @ b, (a, b), dc)
    np.testing.assert_allclose(backend.to_numpy(c), tc, rtol=TOL, atol=TOL)
    _assert_close(grads, tgrads)


@pytest.mark.parametrize("shape_a, shape_b", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1), (3, 1, 4)), ((), (2, 2))])
def test_add_with_broadcasting_matches_torch(backend_name, rng, shape_a, shape_b):
    a, b = np.asarray(rng.normal(size=shape_a)), np.asarray(rng.normal(size=shape_b))
    c, ctx = add_forward(*_dev(a, b))
    dc = rng.normal(size=c.shape)
    grads = _host(*add_backward(backend.asarray(dc), ctx))
    tc, tgrads = _torch_grads(lambda torch, a, b: a + b, (a, b), dc)
    np.testing.assert_allclose(backend.to_numpy(c), tc, rtol=TOL, atol=TOL)
    _assert_close(grads, tgrads)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax_match_torch(backend_name, rng, axis):
    torch = pytest.importorskip("torch")
    x = 3 * rng.normal(size=(3, 4, 5))
    y, _ = softmax_forward(backend.asarray(x), axis=axis)
    np.testing.assert_allclose(backend.to_numpy(y), torch.softmax(torch.tensor(x), dim=axis).numpy(), rtol=TOL, atol=TOL)
    dy = rng.normal(size=x.shape)
    ly, ctx = log_softmax_forward(backend.asarray(x), axis=axis)
    dx = log_softmax_backward(backend.asarray(dy), ctx)
    tly, (tdx,) = _torch_grads(lambda torch, x: torch.log_softmax(x, dim=axis), (x,), dy)
    np.testing.assert_allclose(backend.to_numpy(ly), tly, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(backend.to_numpy(dx), tdx, rtol=TOL, atol=TOL)


def test_softmax_of_huge_logits_is_exact(backend_name):
    x = np.array([[0.0, -1.0, -2.0], [3.0, 3.0, 3.0]])
    e = [1.0, math.exp(-1.0), math.exp(-2.0)]
    y_big, _ = softmax_forward(backend.asarray(x + 1e4))
    y, _ = softmax_forward(backend.asarray(x))
    # x + 1e4 - max is computed exactly, so the shift changes nothing, not even the last bit.
    np.testing.assert_array_equal(backend.to_numpy(y_big), backend.to_numpy(y))
    np.testing.assert_allclose(backend.to_numpy(y_big)[0], [v / sum(e) for v in e], rtol=1e-15)
    np.testing.assert_array_equal(backend.to_numpy(y_big)[1], [1 / 3] * 3)
    ly, _ = log_softmax_forward(backend.asarray(np.array([1e4, -1e4])))
    np.testing.assert_array_equal(backend.to_numpy(ly), [0.0, -2e4])  # exp(-2e4) underflows; the log does not


def test_softmax_rows_with_minus_inf(backend_name):
    torch = pytest.importorskip("torch")
    x = np.array([[0.0, -np.inf, math.log(3.0)], [-np.inf, -np.inf, -np.inf], [-np.inf, 7.0, -np.inf]])
    y = backend.to_numpy(softmax_forward(backend.asarray(x))[0])
    np.testing.assert_allclose(y[0], [0.25, 0.0, 0.75], rtol=1e-15)
    np.testing.assert_array_equal(y[1], [0.0, 0.0, 0.0])  # all -inf: zeros, by design
    np.testing.assert_array_equal(y[2], [0.0, 1.0, 0.0])
    theirs = torch.softmax(torch.tensor(x), dim=-1).numpy()
    np.testing.assert_allclose(y[[0, 2]], theirs[[0, 2]], rtol=TOL, atol=TOL)
    assert np.isnan(theirs[1]).all()  # torch gives nan for the all -inf row; we deliberately give 0


def test_log_softmax_of_minus_inf_entries(backend_name):
    x = np.array([[-np.inf, 0.0, 0.0], [-np.inf, -np.inf, -np.inf]])
    y, ctx = log_softmax_forward(backend.asarray(x))
    y = backend.to_numpy(y)
    np.testing.assert_allclose(y[0], [-np.inf, math.log(0.5), math.log(0.5)], rtol=1e-15)
    assert np.all(y[1] == -np.inf)
    dx = backend.to_numpy(log_softmax_backward(backend.asarray(np.ones_like(x)), ctx))
    np.testing.assert_allclose(dx[0], [1.0, -0.5, -0.5], rtol=1e-15)  # dx = dy - softmax * sum(dy)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("impl", ["reference", "kernel"])
def test_a_nan_makes_its_whole_row_nan_as_in_torch(impl):
    torch = pytest.importorskip("torch")
    from nptransformer.kernels.softmax import LogSoftmaxRows, SoftmaxRows

    x = np.array([[0.0, 1.0, np.nan, 2.0], [0.5, -1.0, 0.0, 3.0], [-np.inf] * 4, [np.nan] * 4], dtype=np.float32)
    soft = softmax_forward if impl == "reference" else SoftmaxRows().forward
    log_soft = log_softmax_forward if impl == "reference" else LogSoftmaxRows().forward
    y, logy = soft(x)[0], log_soft(x)[0]
    t = torch.from_numpy(x)
    for ours, theirs in ((y, torch.softmax(t, -1)), (logy, torch.log_softmax(t, -1))):
        assert np.isnan(ours[[0, 3]]).all()  # every entry of a row with a NaN, not only the NaN's own
        np.testing.assert_allclose(ours[1], theirs.numpy()[1], rtol=1e-6)
    np.testing.assert_array_equal(y[2], 0.0)  # all -inf: zeros and -inf, by design
    assert np.all(logy[2] == -np.inf)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: linear_forward(np.zeros((2, 3), np.float32), np.zeros((4, 3))), TypeError, "weight has dtype float64"),
        (lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(4, np.float32)), TypeError, "bias"),
        (lambda: linear_forward(np.zeros((2, 3), np.int64), np.zeros((4, 3))), TypeError, "x must be a floating"),
        (lambda: linear_forward(np.zeros((2, 3)), np.zeros(3)), ValueError, "weight must have 2 dimensions"),
        (lambda: linear_forward(np.zeros((2, 5)), np.zeros((4, 3))), ValueError, r"x must have last dimension 3"),
        (lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3)), ValueError, r"bias must have shape \(4,\)"),
        (lambda: matmul_forward(np.zeros((2, 3)), np.zeros((3, 2), np.float32)), TypeError, "b has dtype float32"),
        (lambda: matmul_forward(np.zeros(3), np.zeros((3, 2))), ValueError, "at least 2 dimensions"),
        (lambda: matmul_forward(np.zeros((2, 3)), np.zeros((4, 2))), ValueError, r"a's last dimension \(3\)"),
        (lambda: matmul_forward(np.zeros((2, 3), np.int64), np.zeros((3, 2))), TypeError, "a must be a floating"),
        (lambda: softmax_forward(np.zeros(3, np.int64)), TypeError, "x must be a floating"),
        (lambda: softmax_forward(np.zeros((2, 3)), axis=2), ValueError, "axis must be an int"),
        (lambda: softmax_forward([0.0, 1.0]), TypeError, "x must be an array"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
