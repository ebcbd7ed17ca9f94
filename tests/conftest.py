"""Shared test setup: hypothesis profiles and backend fixtures.

Profiles: "ci" (default; bounded so the suite stays under 10 minutes on 2
cores) and "thorough" (HYPOTHESIS_PROFILE=thorough for deep local runs).
"""

import importlib.util
import os
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)``: examples/<name>.py as a module (the examples are scripts, not a package)."""

    def load(name):
        spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(params=["numpy", "strict"])
def backend_name(request):
    """Run a test under each CPU backend; restores numpy afterwards."""
    from nptransformer import backend

    with backend.use(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def needs_the_pool():
    """Skip the test when the pool cannot run: it holds BLAS to one thread (nptransformer.blas_control)."""
    from nptransformer import blas_control

    if not blas_control.can_limit():
        pytest.skip("the pool needs a BLAS it can hold to one thread (OpenBLAS, MKL, or threadpoolctl)")


@pytest.fixture(params=[1, 2], ids=["serial", "pool"])
def threads(request):
    """Run a test serially and with nptransformer's pool (two threads, or as parametrized indirectly).

    With more than one thread every kernel runs with its ``test_settings``
    (kernels.small_settings()): split thresholds and block sizes so small
    that test-sized arrays reach every split and block. Needs a BLAS the
    pool can hold to one thread (nptransformer.blas_control).
    """
    from nptransformer import parallel
    from nptransformer.kernels import configured, small_settings

    if request.param > 1:
        request.getfixturevalue("needs_the_pool")
        with parallel.num_threads(request.param), configured(small_settings()):
            yield request.param
    else:
        yield request.param
