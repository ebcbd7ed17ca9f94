"""Float16 inputs to softmax, the norms, the losses and attention: statistics in float32, results rounded once.

The independent reference is the reference op run in float64 on the same
float16-rounded inputs: the kernels must be within float16's rounding of it
(values and every gradient), and the all-float16 reference must not be.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nptransformer import backend, testing
from nptransformer.kernels import KERNELS, choose, reference_only
from nptransformer.kernels.half_statistics import LOSSES, OPS_WITH_STATISTICS
from nptransformer.nn import LayerNorm, MixedPrecision
from nptransformer.registry import OPS

HALF_MAX = float(np.finfo(np.float16).max)


def _as(values, dtype):
    return tuple(v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for v in values)


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _within_half_rounding(got, exact, what):
    if exact is None:
        assert got is None, what
        return
    exact = np.asarray(exact, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(exact), initial=0.0)))
    # One float16 rounding of the result (2^-11 relative) plus float32 arithmetic (far below it).
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), exact, rtol=2 ** -10, atol=1e-5 * scale,
                               err_msg=what)


def test_every_op_with_a_row_statistic_has_a_float32_statistics_kernel():
    for op in OPS_WITH_STATISTICS:
        assert f"{op}.float32_statistics" in KERNELS, op
        case = OPS[op].example(np.random.default_rng(0))
        half = _as(case.args, np.float16)
        assert choose(op, *half, **case.kwargs).name == f"{op}.float32_statistics"
        assert choose(op, *case.args, **case.kwargs) is not KERNELS[f"{op}.float32_statistics"]


@pytest.mark.parametrize("op", OPS_WITH_STATISTICS)
@given(data=st.data())
def test_float16_results_and_gradients_are_the_float64_ones_rounded_once(op, data):
    spec, kernel = OPS[op], KERNELS[f"{op}.float32_statistics"]
    case = data.draw(spec.cases(testing), label="case")
    half = _as(case.args, np.float16)
    kwargs = {k: (v.astype(np.float16) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
              for k, v in case.kwargs.items()}
    assume(all(np.all(np.isfinite(a[np.isfinite(a)]) & (np.abs(a[np.isfinite(a)]) < 1e3))
               for a in half if isinstance(a, np.ndarray) and a.dtype.kind == "f"))
    exact_kwargs = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
                    for k, v in kwargs.items()}
    generator = kwargs.get("generator") or backend.default_generator
    state = generator.state()
    exact, exact_ctx = spec.forward(*_as(half, np.float64), **exact_kwargs)
    generator.set_state(state)  # dropout draws the same mask for both
    got, ctx = kernel.forward(*half, **kwargs)
    assume(np.all(np.abs(exact) < HALF_MAX / 4))
    want_dtype = np.float32 if op in LOSSES else np.float16
    assert np.asarray(got).dtype == want_dtype, f"{op}: result dtype {np.asarray(got).dtype}"
    _within_half_rounding(got, exact, f"{op} forward")
    dout = np.random.default_rng(0).normal(size=np.shape(exact))
    dout_half = dout.astype(want_dtype) if np.ndim(dout) else float(dout)
    exact_grads = _tuple(spec.backward(np.asarray(dout_half, np.float64) if np.ndim(dout) else dout_half, exact_ctx))
    got_grads = _tuple(kernel.backward(dout_half, ctx))
    assert len(got_grads) == len(exact_grads)
    for i, (g, w) in enumerate(zip(got_grads, exact_grads)):
        if g is not None:
            assert g.dtype == np.float16, f"{op} gradient {i} dtype {g.dtype}"
            assume(np.all(np.abs(w) < HALF_MAX / 4))
        _within_half_rounding(g, w, f"{op} gradient {i}")


def test_a_layer_norm_whose_variance_overflows_float16_still_normalises():
    x = np.array([[-300.0, 0.0, 300.0, 100.0]], dtype=np.float16)  # 300^2 = 90,000 > 65,504
    norm = LayerNorm(4, dtype="float16")
    exact = (x.astype(np.float64) - x.mean()) / x.astype(np.float64).std()
    np.testing.assert_allclose(norm(x).astype(np.float64), exact, rtol=2 ** -10)
    with reference_only(), np.errstate(over="ignore"):
        assert np.all(norm(x) == 0)  # the all-float16 reference: inf variance, every output 0


def test_mixed_precision_keeps_the_layer_norm_statistics_in_float32():
    x = np.array([[-300.0, 0.0, 300.0, 100.0]], dtype=np.float32)
    mp = MixedPrecision(LayerNorm(4, dtype="float32"), "float16")
    y = mp(x)
    exact = (x - x.mean()) / x.std()
    np.testing.assert_allclose(y, exact, rtol=2 ** -10)
    dx = mp.backward(np.array([[1.0, -2.0, 0.5, 0.25]], np.float32))
    assert np.all(np.isfinite(dx)) and abs(float(dx.sum())) < 1e-3  # a layer norm's dx sums to zero


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_attention_weights_come_back_through_any_kernel(dtype):
    from nptransformer.nn import GroupedQueryAttention, MultiheadAttention

    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(dtype)
    for layer, call in ((MultiheadAttention(8, 2, dtype=dtype), lambda m: m(x, x, x, need_weights=True)),
                        (GroupedQueryAttention(8, 4, 2, dtype=dtype), lambda m: m(x, need_weights=True, is_causal=True))):
        call(layer)
        w = np.asarray(layer.attn_weights, dtype=np.float64)
        assert w.shape[-2:] == (5, 5)
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-6 if dtype == "float64" else 1e-3)
