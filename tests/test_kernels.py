"""Every kernel against the reference op it implements: values and every gradient, and finite differences.

Each kernel runs with its ``test_settings`` (block sizes and split thresholds
small enough that these test-sized inputs reach every split and block), on
1, 2 and 3 threads, under numpy and strict (the backends it is written for), on
hypothesis-drawn inputs.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import backend, testing
from nptransformer.gradcheck import check_grad
from nptransformer.kernels import KERNELS, choose, configured, reference_only, small_settings
from nptransformer.registry import OPS

KERNEL_NAMES = sorted(KERNELS)
# Each kernel on each CPU backend its code is written for (a NumPy-only kernel has no strict run to skip).
KERNEL_BACKENDS = [(name, b) for name in KERNEL_NAMES for b in ("numpy", "strict") if b in KERNELS[name].backends]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _assert_close(got, want, what):
    if want is None:
        assert got is None, f"{what}: the reference gives None, the kernel an array"
        return
    # A 0-d op's gradient may be a Python number (its dout is one, and dropout's identity returns it).
    got, want = (np.asarray(a) if isinstance(a, (int, float)) else backend.to_numpy(a) for a in (got, want))
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=what)


def test_every_kernel_names_a_registered_reference_op():
    assert KERNELS, "no kernels registered"
    for name, kernel in KERNELS.items():
        assert kernel.op in OPS, f"{name} implements {kernel.op!r}, which has no reference"
        assert kernel.name == name
        unknown = set(kernel.test_settings) - set(kernel.defaults)
        assert not unknown, f"{name}: test_settings {unknown} are not settings"


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("name,backend_name", KERNEL_BACKENDS, indirect=["backend_name"])
@given(data=st.data())
def test_kernel_equals_its_reference(name, threads, backend_name, data):
    kernel = KERNELS[name].configured(**KERNELS[name].test_settings)
    spec = OPS[kernel.op]
    case = data.draw(kernel.cases(testing), label="case")
    args = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in case.args]
    gen_state = backend.default_generator.state()
    want, want_ctx = spec.forward(*args, **case.kwargs)
    backend.default_generator.set_state(gen_state)  # dropout draws the same mask for both
    got, ctx = kernel.forward(*args, **case.kwargs)
    _assert_close(got, want, f"{name} forward")
    dout_host = np.random.default_rng(0).normal(size=tuple(np.shape(backend.to_numpy(want))))
    dout = backend.asarray(dout_host) if np.ndim(dout_host) else float(dout_host)
    want_grads, got_grads = _tuple(spec.backward(dout, want_ctx)), _tuple(kernel.backward(dout, ctx))
    assert len(got_grads) == len(want_grads), f"{name}: {len(got_grads)} gradients, reference {len(want_grads)}"
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        _assert_close(g, w, f"{name} gradient {i}")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("name,backend_name", KERNEL_BACKENDS, indirect=["backend_name"])
@given(data=st.data())
def test_kernel_matches_finite_differences(name, threads, backend_name, data):
    kernel = KERNELS[name].configured(**KERNELS[name].test_settings)
    case = data.draw(kernel.cases(testing), label="case")
    report = check_grad((kernel.forward, kernel.backward), case.args, case.kwargs,
                        wrt=OPS[kernel.op].differentiable)
    report.raise_if_failed()
    # Relative 1e-6, or 1e-9 absolute where the gradient is about zero (a drawn case whose loss is flat in an
    # input, e.g. a student equal to its teacher: relative error of finite-difference noise against 0 is 1).
    assert all(r.max_rel < 1e-6 or r.max_abs < 1e-9 for r in report.rows), report.table()


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_dispatch_runs_the_kernel_where_it_applies_and_the_reference_otherwise(name):
    kernel = KERNELS[name]
    case = OPS[kernel.op].example(np.random.default_rng(0))
    with configured(small_settings()):
        chosen = choose(kernel.op, *case.args, **case.kwargs)
        with reference_only():
            assert choose(kernel.op, *case.args, **case.kwargs) is OPS[kernel.op]
    assert chosen is OPS[kernel.op] or chosen.op == kernel.op
