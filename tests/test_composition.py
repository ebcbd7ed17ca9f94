"""Layers read as compositions: no path chosen by a module's type or an array's identity; sublayers
from factories; the decoding interface is all generation needs."""

import numpy as np
import pytest

from nptransformer import GPT, backend, nn
from nptransformer.functional import gelu_forward, rms_norm_forward
from nptransformer.gradcheck import check_grad
from nptransformer.kernels import choose, configured, disabled, reference_only, small_settings


def _x(rng, *shape):
    return rng.normal(size=shape)


def test_feed_forward_keys_stay_torchs_and_its_children_are_the_layers_attributes():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dtype="float64")
    assert list(layer.state_dict())[4:10] == ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                                              "norm1.weight", "norm1.bias"]
    assert layer.linear1 is layer.feed_forward.linear1 and layer.dropout is layer.feed_forward.dropout
    assert "feed_forward" not in " ".join(layer.state_dict())


def test_a_linear_subclass_in_the_feed_forward_is_called_not_bypassed(rng):
    class Doubled(nn.Linear):
        def forward(self, x, activation=None):
            return 2.0 * super().forward(x, activation=activation)

        def backward(self, dy):
            return super().backward(2.0 * dy)

    ff = nn.FeedForward(4, 6, activation="gelu_tanh", dtype="float64")
    x = _x(rng, 2, 3, 4)
    w1, b1 = ff.linear1.weight.data, ff.linear1.bias.data
    w2, b2 = ff.linear2.weight.data, ff.linear2.bias.data
    doubled = Doubled(4, 6, dtype="float64")
    doubled.load_state_dict(ff.linear1.state_dict())
    ff.linear1 = doubled
    h, _ = gelu_forward(x @ w1.T + b1, approximate="tanh")
    np.testing.assert_allclose(ff(x), (2.0 * h) @ w2.T + b2, rtol=1e-12)
    check_grad(ff, [x]).raise_if_failed()


def test_norm_and_feed_forward_factories_build_the_sublayers(rng):
    layer = nn.TransformerEncoderLayer(4, 2, dropout=0.0, norm_first=True, dtype="float64",
                                       norm=lambda d: nn.RMSNorm(d, dtype="float64"),
                                       feed_forward=lambda d: nn.FeedForward(d, 8, activation="relu", bias=False,
                                                                            dtype="float64"))
    assert isinstance(layer.norm1, nn.RMSNorm) and layer.linear1.bias is None
    assert "norm1.bias" not in layer.state_dict() and "linear1.weight" in layer.state_dict()
    x = _x(rng, 2, 3, 4)
    sa = nn.MultiheadAttention(4, 2, dtype="float64")
    sa.load_state_dict(layer.self_attn.state_dict())
    n1, _ = rms_norm_forward(x, layer.norm1.weight.data)
    h = x + sa(n1, n1, n1, need_weights=False)[0]
    n2, _ = rms_norm_forward(h, layer.norm2.weight.data)
    expected = h + np.maximum(n2 @ layer.linear1.weight.data.T, 0.0) @ layer.linear2.weight.data.T
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-14)


def test_equal_arrays_take_the_same_path_as_one_array(rng):
    # forward(q, k, v) never compares arrays: one array passed three times, or three equal copies,
    # give the same output and three gradients each.
    mha = nn.MultiheadAttention(4, 2, dtype="float64")
    x = _x(rng, 2, 3, 4)
    dy = _x(rng, 2, 3, 4)
    y_same, _ = mha(x, x, x)
    grads_same = mha.backward(dy)
    y_copies, _ = mha(x.copy(), x.copy(), x.copy())
    grads_copies = mha.backward(dy)
    np.testing.assert_array_equal(y_same, y_copies)
    assert len(grads_same) == len(grads_copies) == 3
    for a, b in zip(grads_same, grads_copies):
        np.testing.assert_array_equal(a, b)
    # self_attention: the same numbers, its one gradient the sum of the three paths
    np.testing.assert_allclose(mha.self_attention(x), y_same, rtol=1e-12)
    np.testing.assert_allclose(mha.backward(dy), sum(grads_same), rtol=1e-10, atol=1e-12)


def test_attention_bias_gradient_reaches_the_caller(rng):
    mha = nn.MultiheadAttention(4, 2, dtype="float64")
    x, bias = _x(rng, 2, 3, 4), _x(rng, 2, 3, 3)  # bias (H, L, S)
    y = mha.self_attention(x, attn_bias=bias, is_causal=True)
    dx, dbias = mha.backward(np.ones_like(y))
    assert dx.shape == x.shape and dbias.shape == bias.shape
    assert np.all(np.triu(dbias, k=1) == 0)  # masked scores pass no gradient to their bias


def test_the_dispatch_chooses_by_op_and_settings_not_by_layer():
    x = np.zeros((256, 256))
    assert choose("softmax", x).name == "softmax.rows"
    assert choose("softmax", x[:2]).name == "softmax"  # small arrays: the reference is faster there
    with disabled("softmax.rows"):
        assert choose("softmax", x).name == "softmax"  # the reference OpSpec
    with reference_only():
        assert choose("linear_activation", x, np.zeros((3, 8))).name == "linear_activation"


def test_reference_and_kernels_train_a_gpt_to_the_same_numbers(rng):
    idx = rng.integers(0, 11, size=(2, 6))

    def step(reference):
        model = GPT(11, 8, 2, 2, 8, dtype="float64", generator=backend.Generator(0))
        criterion = nn.CrossEntropyLoss()
        with (reference_only() if reference else configured(small_settings())):  # kernels reach tiny arrays
            loss = criterion(model(idx[:, :-1]), idx[:, 1:])
            model.backward(criterion.backward())
        return float(loss), {n: p.grad for n, p in model.named_parameters()}

    (loss_ref, grads_ref), (loss_fast, grads_fast) = step(True), step(False)
    assert loss_ref == pytest.approx(loss_fast, rel=1e-13)
    for name in grads_ref:
        np.testing.assert_allclose(grads_fast[name], grads_ref[name], rtol=1e-10, atol=1e-13, err_msg=name)


class _OnlyTheInterface(nn.Module):
    """A decoder-only model known to generation only through the documented interface."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.vocab_size, self.max_positions = inner.vocab_size, inner.block_size

    def new_cache(self, capacity):
        return self.inner.new_cache(capacity)

    def decode(self, ids, cache=None, attention_mask=None, position_ids=None):
        return self.inner(ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)


def test_generation_needs_only_the_decoding_interface():
    from nptransformer.generation import generate

    gpt = GPT(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=8, generator=backend.Generator(0))
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    for use_cache in (True, False):
        np.testing.assert_array_equal(generate(_OnlyTheInterface(gpt), prompt, 5, use_cache=use_cache),
                                      gpt.generate(prompt, 5, use_cache=use_cache))
