"""Fake quantization (straight-through), QAT layers, and the distillation loss against torch."""

import numpy as np
import pytest

from nptransformer import GPT
from nptransformer.backend import Generator
from nptransformer.functional import (distillation_backward, distillation_forward, fake_quantize_backward,
                                      fake_quantize_forward)
from nptransformer.gradcheck import check_grad
from nptransformer.nn import FakeQuantLinear, Linear, QuantizedLinear, prepare_qat, quantize_dynamic


def test_fake_quantize_rounds_to_the_grid_clips_and_passes_gradients_straight_through_inside_only():
    x = np.array([-2.0, -0.74, 0.26, 0.3, 0.9, 5.0])
    y, ctx = fake_quantize_forward(x, np.array(0.25), qmin=-4, qmax=3)
    np.testing.assert_array_equal(y, [-1.0, -0.75, 0.25, 0.25, 0.75, 0.75])
    np.testing.assert_array_equal(fake_quantize_backward(np.full(6, 2.0), ctx), [0, 2, 2, 2, 0, 0])


def test_the_straight_through_backward_is_the_exact_derivative_of_the_unrounded_surrogate():
    rng = np.random.default_rng(0)
    x, s = rng.normal(size=(4, 6)) * 2, rng.uniform(0.1, 0.3, size=(4, 1))
    check_grad((fake_quantize_forward, fake_quantize_backward), [x, s], {"qmin": -5, "qmax": 5, "rounding": False},
               wrt=[0]).raise_if_failed()


@pytest.mark.parametrize("kwargs, match", [({"scale": np.array(0.0)}, "scale"), ({"qmin": 3, "qmax": 3}, "qmin"),
                                           ({"qmin": 1.5}, "qmin")])
def test_fake_quantize_refuses_bad_arguments_by_name(kwargs, match):
    args = {"x": np.ones(3), "scale": np.array(0.1), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        fake_quantize_forward(**args)


def test_a_fake_quant_linear_computes_what_the_int8_layer_will():
    lin = Linear(8, 5, generator=Generator(0))
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(FakeQuantLinear.from_linear(lin)(x), QuantizedLinear.from_linear(lin)(x),
                               rtol=1e-5, atol=1e-5)


def test_the_largest_weight_and_input_of_each_row_keep_their_gradient():
    # 1.4080487880847863 / (1.4080487880847863 / 127) rounds to 127.00000000000001: without care the largest
    # entry would fall outside its own clip range and lose its gradient. Unrounded, clipping at +-max|.| is
    # the identity, so the gradients are a plain Linear's.
    big = 1.4080487880847863
    weight = np.array([[big, 0.5, -0.25], [-0.3, -big, 0.1]])
    x = np.array([[[0.2, -big, 0.7]], [[big, 0.0, -1.0]]])
    plain = Linear(3, 2, dtype="float64")
    plain.weight.data, plain.bias.data = weight.copy(), np.array([0.1, -0.2])
    fake = FakeQuantLinear.from_linear(Linear(3, 2, dtype="float64"), rounding=False)
    fake.weight.data, fake.bias.data = weight.copy(), np.array([0.1, -0.2])
    dy = np.array([[[1.0, -2.0]], [[0.5, 3.0]]])
    np.testing.assert_allclose(fake(x), plain(x), rtol=1e-14, atol=1e-15)  # x / s * s: within rounding of x
    dx_fake, dx_plain = fake.backward(dy), plain.backward(dy)
    np.testing.assert_allclose(dx_fake, dx_plain, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(fake.weight.grad, plain.weight.grad, rtol=1e-14, atol=1e-15)
    assert fake.weight.grad[0, 0] != 0 and fake.weight.grad[1, 1] != 0 and dx_fake[0, 0, 1] != 0


def test_prepare_qat_shares_parameters_trains_and_converts():
    model = GPT(11, 8, n_layer=1, n_head=2, d_model=16, generator=Generator(0))
    qat = prepare_qat(model, inplace=True)
    assert sum(isinstance(m, FakeQuantLinear) for m in qat.modules()) == 3
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    qat(x)
    qat.backward(np.ones((2, 8, 11), dtype=np.float32))
    assert all(p.grad is not None for p in qat.parameters())
    assert sum(isinstance(m, QuantizedLinear) for m in quantize_dynamic(qat).modules()) == 3


def _torch_kd(s, t, y, T, alpha):
    torch = pytest.importorskip("torch", reason="the distillation loss is compared with torch")
    st = torch.tensor(s, requires_grad=True)
    tt, yt = torch.tensor(t), torch.tensor(y)
    keep = yt != -100
    kl = torch.nn.functional.kl_div(torch.log_softmax(st / T, -1), torch.log_softmax(tt / T, -1), reduction="none",
                                    log_target=True).sum(-1)
    ce = torch.nn.functional.cross_entropy(st.reshape(-1, s.shape[-1]), yt.reshape(-1), reduction="none",
                                           ignore_index=-100).reshape(y.shape)
    loss = ((alpha * T * T * kl + (1 - alpha) * ce) * keep).sum() / keep.sum()
    loss.backward()
    return loss.item(), st.grad.numpy()


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (3.0, 1.0)])
def test_distillation_loss_and_gradient_match_torch(T, alpha):
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(2, 5, 7)) * 2, rng.normal(size=(2, 5, 7)) * 2
    y = rng.integers(0, 7, size=(2, 5))
    y[1, 3] = -100
    ref_loss, ref_grad = _torch_kd(s, t, y, T, alpha)
    loss, ctx = distillation_forward(s, t, y, temperature=T, alpha=alpha)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(distillation_backward(1.0, ctx), ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"),
                                           ({"teacher": np.zeros((2, 3))}, "teacher")])
def test_distillation_refuses_bad_arguments_by_name(kwargs, match):
    args = {"student": np.zeros((2, 4)), "teacher": np.zeros((2, 4)), "target": np.array([0, 1]), **kwargs}
    with pytest.raises(ValueError, match=match):
        distillation_forward(**args)


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quant_and_int8_layers_agree_at_any_bit_width(bits):
    lin = Linear(8, 5, generator=Generator(0))
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    q = QuantizedLinear.from_linear(lin, bits=bits)
    assert np.abs(q.qweight).max() == 2 ** (bits - 1) - 1
    np.testing.assert_allclose(FakeQuantLinear.from_linear(lin, bits=bits)(x), q(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="bits"):
        prepare_qat(lin, bits=9)
