"""The backend layer: namespace selection, device discipline, erf, scatter_add, random state."""

import math
import subprocess
import sys

import numpy as np
import pytest

from nptransformer import backend


def test_import_pulls_in_numpy_only():
    code = (
        "import sys; before = set(sys.modules);"
        "import nptransformer, nptransformer.nn, nptransformer.functional, nptransformer.gradcheck;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "new -= set(sys.stdlib_module_names) | {'nptransformer', 'numpy', 'cython_runtime'};"
        "print(sorted(m for m in new if not m.startswith('_cython')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing nptransformer imported third-party modules: {out}"


def test_use_restores_previous_backend():
    assert backend.get_backend() == "numpy"
    with backend.use("strict") as xp:
        assert backend.get_backend() == "strict"
        assert xp.__name__ == "array_api_strict"
    assert backend.get_backend() == "numpy"
    assert backend.xp is np


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("jax")


def test_cupy_without_gpu_is_a_clear_error():
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy is installed; this test covers its absence")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="cupy"):
        backend.set_backend("cupy")
    assert backend.get_backend() == "numpy"


def test_strict_arrays_live_on_a_device_that_refuses_host_conversion():
    with backend.use("strict"):
        a = backend.asarray(np.arange(3.0))
        assert "device1" in str(a.device)
        with pytest.raises(RuntimeError):
            np.asarray(a)
        np.testing.assert_array_equal(backend.to_numpy(a), [0.0, 1.0, 2.0])


def test_mixed_backends_are_refused():
    with backend.use("strict"):
        a = backend.asarray(np.ones(2))
    with pytest.raises(TypeError, match="two backends"):
        backend.get_array_module(np.ones(2), a)


@pytest.mark.parametrize("use_fallback", [False, True])
def test_erf_is_float64_accurate(backend_name, use_fallback):
    xs = np.concatenate([np.linspace(-6, 6, 2001), [0.0, 1e-12, -1e-300, 2.5, -2.5, 2.5000001, 30.0]])
    x = backend.asarray(xs)
    got = backend.to_numpy(backend._erf_array_api(x) if use_fallback else backend.erf(x))
    want = np.array([math.erf(v) for v in xs])
    np.testing.assert_allclose(got, want, rtol=2e-15, atol=1e-15)


def test_scatter_add_accumulates_repeats(backend_name):
    target = backend.zeros((4, 2), dtype="float64")
    idx = backend.asarray(np.array([0, 2, 2, 3, 0, 0]))
    vals = backend.asarray(np.arange(12.0).reshape(6, 2))
    backend.scatter_add(target, idx, vals)
    want = np.zeros((4, 2))
    for i, row in zip([0, 2, 2, 3, 0, 0], np.arange(12.0).reshape(6, 2)):
        want[i] += row
    np.testing.assert_array_equal(backend.to_numpy(target), want)


@pytest.mark.parametrize("longest", [1, 5, backend.RANKED_MAX_RUN, backend.RANKED_MAX_RUN + 1, 300])
def test_scatter_add_equals_one_row_at_a_time(longest):
    # Runs up to RANKED_MAX_RUN are added rank by rank, longer ones by reduceat: both against np.add.at.
    rng = np.random.default_rng(longest)
    index = np.concatenate([rng.integers(8, 50, 400), np.full(longest, 7)])  # id 7: one run of `longest`
    rng.shuffle(index)
    values = rng.normal(size=(index.size, 3))
    target = rng.normal(size=(50, 3))
    want = target.copy()
    np.add.at(want, index, values)
    backend.scatter_add(target, index, values)
    np.testing.assert_allclose(target, want, rtol=1e-12, atol=1e-12)


def test_generator_state_round_trip_and_backend_independence():
    g = backend.Generator(7)
    state = g.state()
    a = backend.to_numpy(g.normal((5,), dtype="float64"))
    g.set_state(state)
    with backend.use("strict"):
        b = backend.to_numpy(g.normal((5,), dtype="float64"))
    np.testing.assert_array_equal(a, b)
    mask = backend.to_numpy(backend.Generator(1).bernoulli((200_000,), 0.3))
    assert abs(mask.mean() - 0.3) < 0.005


def test_asarray_dtype_and_zeros_follow_the_backend(backend_name):
    a = backend.asarray([1, 2], dtype="float32")
    assert backend.dtype_name(a.dtype) == "float32"
    z = backend.zeros((2, 3), like=a)
    assert backend.backend_of(z) == backend_name and tuple(z.shape) == (2, 3)
    np.testing.assert_array_equal(backend.to_numpy(backend.arange(4, like=a)), [0, 1, 2, 3])


def test_large_float32_draws_are_numpys_draws_cast_also_when_filled_in_place():
    # Drawn in chunks to spare a float64 copy of a whole table: the numbers must be NumPy's own, in order.
    shape = (1000, 300)  # above the chunk size
    want = np.random.Generator(np.random.PCG64(5)).normal(0.0, 0.02, size=shape).astype(np.float32)
    np.testing.assert_array_equal(backend.Generator(5).normal(shape, 0.0, 0.02), want)
    out = np.empty(shape, np.float32)
    assert backend.Generator(5).normal(shape, 0.0, 0.02, out=out) is out
    np.testing.assert_array_equal(out, want)
    want_u = np.random.Generator(np.random.PCG64(6)).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    np.testing.assert_array_equal(backend.Generator(6).uniform(shape, -1.0, 1.0), want_u)
    with pytest.raises(ValueError, match="out must be"):
        backend.Generator(0).normal((2, 3), out=np.empty((3, 2), np.float32))
