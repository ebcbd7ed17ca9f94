"""Initialisers: sample statistics against closed-form variances, seeding, fans and gains against torch."""

import math

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.nn import Parameter
from nptransformer.nn import init

N = 400  # 400 x 400 = 160,000 samples: sample variance within ~0.5% (1 sigma) of the truth


def _param(shape, dtype="float64"):
    return Parameter(backend.asarray(np.zeros(shape), dtype=dtype))


def _host(p):
    return backend.to_numpy(p.data).astype(np.float64)


def _assert_variance(x, var, mean=0.0):
    assert abs(x.mean() - mean) <= 5 * math.sqrt(var / x.size)
    assert x.var() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_uniform(gain):
    p = init.xavier_uniform_(_param((N, N)), gain=gain, generator=backend.Generator(0))
    bound = gain * math.sqrt(6 / (N + N))
    x = _host(p)
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
    _assert_variance(x, bound**2 / 3)


def test_xavier_normal():
    x = _host(init.xavier_normal_(_param((N, 2 * N)), gain=2.0, generator=backend.Generator(1)))
    _assert_variance(x, 4.0 * 2 / (N + 2 * N))


def test_kaiming_uniform_linear_default():
    # torch.nn.Linear's init: a = sqrt(5) gives the bound 1 / sqrt(fan_in).
    fan_in = 2 * N
    p = init.kaiming_uniform_(_param((N // 2, fan_in)), a=math.sqrt(5), generator=backend.Generator(2))
    x = _host(p)
    assert np.abs(x).max() <= 1 / math.sqrt(fan_in)
    _assert_variance(x, 1 / (3 * fan_in))


def test_kaiming_uniform_fan_out_relu():
    fan_out = 3 * N
    p = init.kaiming_uniform_(_param((fan_out, N // 3)), nonlinearity="relu", mode="fan_out",
                              generator=backend.Generator(3))
    _assert_variance(_host(p), 2 / fan_out)


def test_kaiming_normal():
    p = init.kaiming_normal_(_param((N, N)), nonlinearity="relu", generator=backend.Generator(4))
    _assert_variance(_host(p), 2 / N)
    q = init.kaiming_normal_(_param((N, N, 1)), a=0.2, generator=backend.Generator(4))
    _assert_variance(_host(q), 2 / (1 + 0.2**2) / N)


def test_normal_uniform_constants():
    _assert_variance(_host(init.normal_(_param((N, N)), generator=backend.Generator(5))), 0.02**2)
    _assert_variance(_host(init.normal_(_param((N, N)), mean=1.0, std=0.5, generator=backend.Generator(5))), 0.25, 1.0)
    x = _host(init.uniform_(_param((N, N)), -1.0, 3.0, generator=backend.Generator(6)))
    assert x.min() >= -1.0 and x.max() < 3.0
    _assert_variance(x, 16 / 12, 1.0)
    np.testing.assert_array_equal(_host(init.zeros_(Parameter(np.ones((2, 3))))), 0.0)
    np.testing.assert_array_equal(_host(init.ones_(Parameter(np.zeros(3)))), 1.0)


def test_same_seed_same_values_on_every_backend(backend_name):
    ref = None
    for _ in range(2):
        p = init.xavier_normal_(_param((5, 7), dtype="float32"), generator=backend.Generator(42))
        assert backend.backend_of(p.data) == backend_name and backend.dtype_name(p.data.dtype) == "float32"
        ref = _host(p) if ref is None else ref
        np.testing.assert_array_equal(_host(p), ref)
    with backend.use("numpy"):
        on_numpy = init.xavier_normal_(_param((5, 7), dtype="float32"), generator=backend.Generator(42))
    np.testing.assert_array_equal(_host(on_numpy), ref)
    other = init.xavier_normal_(_param((5, 7), dtype="float32"), generator=backend.Generator(43))
    assert not np.array_equal(_host(other), ref)


def test_default_generator_is_used():
    saved = backend.default_generator.state()
    try:
        backend.manual_seed(7)
        a = _host(init.normal_(_param((3, 3))))
        b = _host(init.normal_(_param((3, 3)), generator=backend.Generator(7)))
        np.testing.assert_array_equal(a, b)
    finally:
        backend.default_generator.set_state(saved)


@pytest.mark.parametrize("shape", [(3, 4), (5, 2, 3), (4, 3, 2, 2), (1, 7)])
def test_fans_match_torch(shape):
    torch = pytest.importorskip("torch")
    assert init.calculate_fan_in_and_fan_out(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))


@pytest.mark.parametrize("nonlinearity, param", [
    ("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
    ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", 0), ("selu", None),
])
def test_gain_matches_torch(nonlinearity, param):
    torch = pytest.importorskip("torch")
    expected = torch.nn.init.calculate_gain(nonlinearity, param)
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(expected, rel=1e-15)


def test_scaled_residual_std():
    assert init.scaled_residual_std(12) == pytest.approx(0.02 / math.sqrt(24), rel=1e-15)
    assert init.scaled_residual_std(4, std=0.1) == pytest.approx(0.1 / math.sqrt(8), rel=1e-15)


@pytest.mark.parametrize("call, error, match", [
    (lambda: init.xavier_uniform_(np.zeros((2, 2))), TypeError, "param must be a Parameter"),
    (lambda: init.xavier_uniform_(Parameter(np.zeros(3))), ValueError, "at least 2 dimensions"),
    (lambda: init.kaiming_normal_(Parameter(np.zeros((2, 2))), mode="fan_avg"), ValueError, "mode"),
    (lambda: init.kaiming_uniform_(Parameter(np.zeros((2, 2))), nonlinearity="gelu"), ValueError, "nonlinearity"),
    (lambda: init.kaiming_uniform_(Parameter(np.zeros((2, 0)))), ValueError, "fan_in is 0"),
    (lambda: init.normal_(Parameter(np.zeros(2)), std=-1.0), ValueError, "std must be >= 0"),
    (lambda: init.uniform_(Parameter(np.zeros(2)), 1.0, 0.0), ValueError, "a <= b"),
    (lambda: init.normal_(Parameter(np.zeros(2, dtype=np.int64))), TypeError, "floating-point"),
    (lambda: init.scaled_residual_std(0), ValueError, "n_layer"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
