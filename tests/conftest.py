"""Shared test setup: hypothesis profiles and backend fixtures.

Profiles: "ci" (default; bounded so the suite stays under 10 minutes on 2
cores) and "thorough" (HYPOTHESIS_PROFILE=thorough for deep local runs).
"""

import os

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


@pytest.fixture(params=["numpy", "strict"])
def backend_name(request):
    """Run a test under each CPU backend; restores numpy afterwards."""
    from nptransformer import backend

    with backend.use(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=[1, 2], ids=["serial", "pool"])
def threads(request, monkeypatch):
    """Run a test serially and with nptransformer's pool on two threads, splitting even the tiniest array.

    MIN_ELEMENTS = 1 makes every op cut its work into slabs (the real
    threshold leaves test-sized arrays whole), so the split code paths are
    the ones under test. Needs threadpoolctl (the test extra has it).
    """
    from nptransformer import parallel

    if request.param > 1:
        pytest.importorskip("threadpoolctl", reason="the pool holds BLAS to one thread through threadpoolctl")
        monkeypatch.setattr(parallel, "MIN_ELEMENTS", 1)
    with parallel.num_threads(request.param):
        yield request.param


@pytest.fixture(params=["whole", "blocked"])
def causal_blocks(request, monkeypatch):
    """Run a test with causal attention as one block and cut into query blocks of one row.

    Blocks start at 2 * CAUSAL_BLOCK queries (256 by default); CAUSAL_BLOCK = 1
    reaches the blocked code with the few queries a test uses.
    """
    from nptransformer.functional import attention

    if request.param == "blocked":
        monkeypatch.setattr(attention, "CAUSAL_BLOCK", 1)
    return request.param
