"""GPT's one-token decoding step from the weights (models/gpt_decode.py), against the layers' forward with the cache."""

import numpy as np
import pytest

import nptransformer as npt
from nptransformer.backend import Generator
from nptransformer.models import GPT, gpt_decode


def _model(**kwargs):
    options = dict(vocab_size=13, block_size=12, n_layer=2, n_head=2, d_model=8, dtype="float64",
                   generator=Generator(3))
    options.update(kwargs)
    return GPT(**options).eval()


def _prompt_cache(model, prompt):
    cache = model.new_cache(model.block_size)
    model.forward(prompt, cache=cache)
    return cache


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"tie_weights": False}, {"dtype": "float32"}],
                         ids=["gpt2", "no-bias", "untied", "float32"])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_step_equals_the_layers_forward_with_the_cache(kwargs, batch):
    model = _model(**kwargs)
    rng = np.random.default_rng(batch)
    prompt, new = rng.integers(0, 13, (batch, 4)), rng.integers(0, 13, (batch, 1))
    tol = 1e-5 if kwargs.get("dtype") == "float32" else 1e-12
    with npt.no_grad():
        fast_cache, slow_cache = _prompt_cache(model, prompt), _prompt_cache(model, prompt)
        assert gpt_decode.takes(model, new, fast_cache, None, None)
        fast = gpt_decode.step(model, new, fast_cache)
        slow = model.forward(new, cache=slow_cache)  # the layers: what decode ran before the step existed
    assert fast.shape == slow.shape == (batch, 1, 13)
    np.testing.assert_allclose(fast, slow, rtol=tol, atol=tol)
    for a, b in zip(fast_cache.layers, slow_cache.layers):
        assert a.self_attn.length == b.self_attn.length == 5
        np.testing.assert_allclose(a.self_attn.keys, b.self_attn.keys, rtol=tol, atol=tol)
        np.testing.assert_allclose(a.self_attn.values, b.self_attn.values, rtol=tol, atol=tol)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_greedy_tokens_equal_decoding_without_a_cache(activation):
    model = _model()
    for block in model.blocks:
        block.feed_forward.activation = activation
    prompt = np.random.default_rng(0).integers(0, 13, (2, 3))
    cached = model.generate(prompt, 8, use_cache=True)  # every step after the prompt is the fast one
    recomputed = model.generate(prompt, 8, use_cache=False)  # full forwards, no cache
    np.testing.assert_array_equal(cached, recomputed)


def test_the_step_is_taken_only_where_it_computes_the_same():
    model = _model()
    new, prompt = np.array([[1]]), np.array([[2, 3]])
    with npt.no_grad():
        cache = _prompt_cache(model, prompt)
        assert gpt_decode.takes(model, new, cache, None, None)
        assert not gpt_decode.takes(model, np.array([[1, 2]]), cache, None, None)  # two new tokens
        assert not gpt_decode.takes(model, new, cache, np.ones((1, 3), dtype=np.int64), None)  # a mask
        assert not gpt_decode.takes(model, new, cache, None, np.array([[2]]))  # position ids
        assert not gpt_decode.takes(model, new, None, None, None)  # no cache
        model.train()
        assert not gpt_decode.takes(model, new, cache, None, None)  # dropout would run
        model.eval()
        for other in (_model(positional="rotary"), _model(n_kv_head=1), _model(dtype="float16")):
            assert not gpt_decode.takes(other, new, _prompt_cache(other, prompt), None, None)
    assert not gpt_decode.takes(model, new, cache, None, None)  # outside no_grad


def test_bad_token_ids_are_refused_by_name():
    model = _model()
    with npt.no_grad():
        cache = _prompt_cache(model, np.array([[2, 3]]))
        with pytest.raises(ValueError, match="idx"):
            model.decode(np.array([[13]]), cache=cache)
        with pytest.raises(ValueError, match="idx"):
            model.decode(np.array([[-1]]), cache=cache)


def test_quantized_and_fake_quantized_models_keep_the_layers():
    from nptransformer.nn import prepare_qat, quantize_dynamic

    prompt = np.random.default_rng(2).integers(0, 13, (1, 3))
    for model in (quantize_dynamic(_model(dtype="float32")), prepare_qat(_model()).eval()):
        with npt.no_grad():
            cache = _prompt_cache(model, prompt)
            assert not gpt_decode.takes(model, np.array([[1]]), cache, None, None)
        cached, recomputed = model.generate(prompt, 5, use_cache=True), model.generate(prompt, 5, use_cache=False)
        np.testing.assert_array_equal(cached, recomputed)
