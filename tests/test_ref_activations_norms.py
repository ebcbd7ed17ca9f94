"""ReLU, GELU, layer norm and RMS norm against PyTorch in float64, closed forms, erf accuracy, bad input."""

import math

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.functional import (
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    relu_backward,
    relu_forward,
    rms_norm_backward,
    rms_norm_forward,
)


def dev(a):
    """A host array on the current backend (None passes through)."""
    return None if a is None else backend.asarray(a)


def assert_close(got, want, tol=1e-10):
    got = backend.to_numpy(got)
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def torch_grads(torch, fn, inputs, dy):
    """Values and input gradients of a torch function, by autograd, for upstream gradient dy."""
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in inputs]
    y = fn(*ts)
    y.backward(torch.tensor(dy))
    return y, [None if t is None else t.grad for t in ts]


def test_relu_matches_torch(backend_name, rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(3, 4, 5))
    x[0, 0, :2] = 0.0  # torch's subgradient at 0 is 0, ours too
    dy = rng.normal(size=x.shape)
    y, ctx = relu_forward(dev(x))
    want, (dx_want,) = torch_grads(torch, torch.nn.functional.relu, [x], dy)
    assert_close(y, want)
    assert_close(relu_backward(dev(dy), ctx), dx_want)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(backend_name, rng, approximate):
    torch = pytest.importorskip("torch")
    x = np.concatenate([rng.normal(scale=3.0, size=200), np.linspace(-9.0, 9.0, 37)])
    dy = rng.normal(size=x.shape)
    y, ctx = gelu_forward(dev(x), approximate=approximate)
    want, (dx_want,) = torch_grads(torch, lambda t: torch.nn.functional.gelu(t, approximate=approximate), [x], dy)
    assert_close(y, want)
    assert_close(gelu_backward(dev(dy), ctx), dx_want)


def test_gelu_closed_forms():
    phi_1 = 0.8413447460685429  # standard normal CDF at 1
    pdf_1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    y, ctx = gelu_forward(np.array([0.0, 1.0, -1.0, 40.0, -40.0]))
    np.testing.assert_allclose(y, [0.0, phi_1, -(1 - phi_1), 40.0, 0.0], rtol=1e-15, atol=1e-300)
    slope = gelu_backward(np.ones(5), ctx)
    np.testing.assert_allclose(slope, [0.5, phi_1 + pdf_1, 1 - phi_1 - pdf_1, 1.0, 0.0], rtol=1e-14, atol=1e-300)
    # tanh form at 0 has the same value and slope as the exact one
    y, ctx = gelu_forward(np.array([0.0]), approximate="tanh")
    assert y.tolist() == [0.0] and gelu_backward(np.ones(1), ctx).tolist() == [0.5]


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_layer_norm_matches_torch(backend_name, rng, affine):
    torch = pytest.importorskip("torch")
    x = rng.normal(loc=3.0, scale=2.0, size=(2, 3, 7))
    weight = rng.normal(size=7) if affine != "none" else None
    bias = rng.normal(size=7) if affine == "both" else None
    dy = rng.normal(size=x.shape)
    y, ctx = layer_norm_forward(dev(x), dev(weight), dev(bias), eps=1e-3)
    want, grads_want = torch_grads(torch, lambda *a: torch.nn.functional.layer_norm(a[0], (7,), *a[1:], eps=1e-3), [x, weight, bias], dy)
    assert_close(y, want)
    for got, expected in zip(layer_norm_backward(dev(dy), ctx), grads_want):
        assert (got is None) == (expected is None)
        if got is not None:
            assert_close(got, expected)


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_matches_torch(backend_name, rng, eps, with_weight):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(4, 6))
    weight = rng.normal(size=6) if with_weight else None
    dy = rng.normal(size=x.shape)
    y, ctx = rms_norm_forward(dev(x), dev(weight), eps=eps)
    want, grads_want = torch_grads(torch, lambda *a: torch.nn.functional.rms_norm(a[0], (6,), a[1], eps=eps), [x, weight], dy)
    assert_close(y, want)
    for got, expected in zip(rms_norm_backward(dev(dy), ctx), grads_want):
        assert (got is None) == (expected is None)
        if got is not None:
            assert_close(got, expected)


def test_layer_norm_output_is_standardised():
    y, _ = layer_norm_forward(np.array([[1.0, 2.0, 3.0, 10.0]]), eps=0.0)
    np.testing.assert_allclose(y.mean(), 0.0, atol=1e-15)
    np.testing.assert_allclose((y**2).mean(), 1.0, rtol=1e-15)


def test_rms_norm_of_constant_row_is_sign():
    y, _ = rms_norm_forward(np.array([[-3.0, -3.0, -3.0]]), eps=0.0)
    assert y.tolist() == [[-1.0, -1.0, -1.0]]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: relu_forward(np.arange(3)), TypeError, "x must be a floating-point"),
        (lambda: relu_forward([1.0, 2.0]), TypeError, "x must be an array"),
        (lambda: gelu_forward(np.ones(3), approximate="erf"), ValueError, "approximate must be one of"),
        (lambda: gelu_forward(np.arange(3)), TypeError, "x must be a floating-point"),
        (lambda: layer_norm_forward(np.array(1.0)), ValueError, "x must have"),
        (lambda: layer_norm_forward(np.ones((2, 3)), np.ones(4)), ValueError, r"weight must have shape \(3,\)"),
        (lambda: layer_norm_forward(np.ones((2, 3)), None, np.ones((1, 3))), ValueError, "bias must have shape"),
        (lambda: layer_norm_forward(np.ones((2, 3)), np.ones(3, np.float32)), TypeError, "weight has dtype float32"),
        (lambda: layer_norm_forward(np.ones((2, 3)), eps=-1.0), ValueError, "eps must be"),
        (lambda: rms_norm_forward(np.ones((2, 3)), np.ones(2)), ValueError, r"weight must have shape \(3,\)"),
        (lambda: rms_norm_forward(np.ones((2, 3)), np.arange(3)), TypeError, "weight must be a floating-point"),
        (lambda: rms_norm_forward(np.ones((2, 3)), eps="small"), ValueError, "eps must be"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
