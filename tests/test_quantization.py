"""INT8 dynamic quantization: scales, the int32 path against a float reference, the file format."""

import os

import numpy as np
import pytest

from nptransformer import GPT
from nptransformer.backend import Generator
from nptransformer.io import save_checkpoint
from nptransformer.nn import Linear, QuantizedLinear, quantize_dynamic
from nptransformer.nn.quantized import dequantize_rows, quantize_rows
from nptransformer.quantized_io import load_quantized, save_quantized


def test_per_channel_scales_are_max_abs_over_127_and_round_trip_within_half_a_step():
    w = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    w[2] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    np.testing.assert_allclose(scale[[0, 1, 3, 4]], np.abs(w[[0, 1, 3, 4]]).max(axis=1) / 127, rtol=1e-6)
    assert scale[2] == 1.0 and not q[2].any()
    assert np.all(np.abs(dequantize_rows(q, scale) - w) <= scale[:, None] / 2 + 1e-7)


def test_int8_path_equals_an_independent_integer_computation_and_the_dequantize_path_the_float_one():
    rng = np.random.default_rng(1)
    lin = Linear(6, 4, generator=Generator(0))
    x = rng.normal(size=(2, 3, 6)).astype(np.float32)
    ql = QuantizedLinear.from_linear(lin)
    # reference written independently, in float64 with Python ints
    w = lin.weight.data.astype(np.float64)
    sw = np.abs(w).max(axis=1) / 127
    qw = np.round(w / sw[:, None])
    sx = np.abs(x).max(axis=-1, keepdims=True).astype(np.float64) / 127
    qx = np.round(x / sx)
    ref = (qx @ qw.T) * sx * sw + lin.bias.data
    np.testing.assert_allclose(ql(x), ref, rtol=1e-5, atol=1e-6)
    deq = QuantizedLinear.from_linear(lin, path="dequantize")
    np.testing.assert_allclose(deq(x), x.astype(np.float64) @ (qw * sw[:, None]).T + lin.bias.data,
                               rtol=1e-5, atol=1e-6)
    assert np.abs(ql(x) - lin(x)).max() < 0.05


def test_quantize_dynamic_replaces_every_linear_and_keeps_the_logits_close():
    model = GPT(11, 8, n_layer=2, n_head=2, d_model=32, tie_weights=False, generator=Generator(0)).eval()
    q = quantize_dynamic(model)
    kinds = [type(m).__name__ for m in q.modules()]
    assert "Linear" not in kinds and kinds.count("QuantizedLinear") == 2 * 3 + 1  # out_proj, 2 FFN, per layer; head
    assert any(type(m).__name__ == "Linear" for m in model.modules())  # the original is untouched
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    a, b = model(x), q(x)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones_like(b))


def test_the_int8_file_is_about_a_quarter_and_loads_back(tmp_path):
    model = GPT(50, 16, n_layer=2, n_head=2, d_model=64, generator=Generator(0)).eval()
    q = quantize_dynamic(model)
    save_quantized(tmp_path / "q.npz", q)
    save_checkpoint(tmp_path / "f.npz", model)
    ratio = os.path.getsize(tmp_path / "q.npz") / os.path.getsize(tmp_path / "f.npz")
    assert 0.2 < ratio < 0.35
    loaded = load_quantized(tmp_path / "q.npz", GPT(50, 16, n_layer=2, n_head=2, d_model=64, generator=Generator(9)))
    for a, b in zip(loaded.modules(), q.modules()):
        if isinstance(a, QuantizedLinear):
            np.testing.assert_array_equal(a.qweight, b.qweight)
    x = np.random.default_rng(0).integers(0, 50, (2, 16))
    assert np.abs(loaded(x) - model(x)).max() < 0.05 * np.abs(model(x)).max()


def test_load_quantized_refuses_a_file_of_another_format_or_architecture(tmp_path):
    model = GPT(50, 16, n_layer=1, n_head=2, d_model=32, generator=Generator(0))
    save_checkpoint(tmp_path / "f.npz", model)
    with pytest.raises(ValueError, match="nptransformer-int8"):
        load_quantized(tmp_path / "f.npz", model)
    save_quantized(tmp_path / "q.npz", quantize_dynamic(model))
    with pytest.raises(ValueError, match="another architecture"):
        load_quantized(tmp_path / "q.npz", GPT(50, 16, n_layer=2, n_head=2, d_model=32))
