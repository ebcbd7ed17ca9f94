"""Grouped-query attention, rotary, ALiBi and relative-bucket positions, as layers and as GPT options.

- GroupedQueryAttention with num_kv_heads == num_heads is MultiheadAttention's
  self-attention (same parameters: same outputs and gradients);
- grouped-query attention equals multi-head attention whose key/value heads
  are copies (the closed form of sharing), gradients included;
- ALiBi slopes and biases equal transformers' BLOOM ``build_alibi_tensor``;
- rotary attention scores depend on distances only (shifting all positions changes nothing);
- every GPT variant: the cached decoding equals the uncached one, and the
  KV cache of grouped-query attention is n_head / n_kv_head times smaller (bytes);
- the defaults build the same GPT as before (keys and numbers).
"""

import numpy as np
import pytest

from nptransformer import GPT, backend, no_grad
from nptransformer.functional import rope_forward
from nptransformer.functional.alibi import alibi_bias, alibi_slopes
from nptransformer.nn import GroupedQueryAttention, MultiheadAttention


def _grads(module):
    return {name: p.grad.copy() for name, p in module.named_parameters()}


def test_one_kv_head_per_query_head_is_multihead_attention():
    rng = np.random.default_rng(0)
    mha = MultiheadAttention(8, 4, dtype="float64")
    gqa = GroupedQueryAttention(8, 4, num_kv_heads=4, dtype="float64")
    mha.in_proj_bias.data = rng.normal(size=24)
    gqa.load_state_dict(mha.state_dict())
    assert list(gqa.state_dict()) == list(mha.state_dict())
    x, dy = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 8))
    padding = np.array([[False] * 5, [False] * 3 + [True] * 2])
    y1 = mha.self_attention(x, key_padding_mask=padding, is_causal=True)
    y2 = gqa.self_attention(x, key_padding_mask=padding, is_causal=True)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(mha.backward(dy), gqa.backward(dy), rtol=1e-13, atol=1e-15)
    for name, g in _grads(mha).items():
        np.testing.assert_allclose(g, _grads(gqa)[name], rtol=1e-13, atol=1e-15)


def test_shared_kv_heads_equal_multihead_attention_with_copied_heads():
    """H = 4 query heads on 2 kv heads is MHA whose kv heads 0,1 and 2,3 are copies; its gradient is their sum."""
    rng = np.random.default_rng(1)
    E, D = 8, 2
    gqa = GroupedQueryAttention(E, 4, num_kv_heads=2, dtype="float64")
    w = gqa.in_proj_weight.data
    wq, wk, wv = w[:E], w[E:E + 2 * D], w[E + 2 * D:]
    copy_rows = np.concatenate([np.arange(g * D, (g + 1) * D) for g in (0, 0, 1, 1)])  # head h reads kv head h // 2
    mha = MultiheadAttention(E, 4, dtype="float64")
    mha.in_proj_weight.data = np.concatenate([wq, wk[copy_rows], wv[copy_rows]])
    mha.out_proj.weight.data = gqa.out_proj.weight.data.copy()
    x, dy = rng.normal(size=(2, 4, E)), rng.normal(size=(2, 4, E))
    np.testing.assert_allclose(gqa(x, is_causal=True), mha.self_attention(x, is_causal=True), rtol=1e-13)
    np.testing.assert_allclose(gqa.backward(dy), mha.backward(dy), rtol=1e-12, atol=1e-14)
    dm, dg = mha.in_proj_weight.grad, gqa.in_proj_weight.grad
    np.testing.assert_allclose(dg[:E], dm[:E], rtol=1e-12, atol=1e-14)
    for part in (1, 2):  # keys, values: each shared row block collects the two copies' gradients
        copies = dm[part * E:(part + 1) * E].reshape(4, D, E)
        expected = np.concatenate([copies[0] + copies[1], copies[2] + copies[3]])
        np.testing.assert_allclose(dg[E + (part - 1) * 2 * D:E + part * 2 * D], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 6, 8, 12, 16])
def test_alibi_equals_transformers_bloom(heads):
    pytest.importorskip("torch", reason="the reference is transformers' BLOOM")
    pytest.importorskip("transformers", reason="the reference is transformers' BLOOM")
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    T = 7
    theirs = build_alibi_tensor(torch.ones(1, T), heads, torch.float64).reshape(heads, T).numpy()  # m_h j
    slopes = theirs[:, 1]
    # BLOOM computes the slopes in float32 powers: equal to ours up to float32 rounding
    np.testing.assert_allclose(np.array(alibi_slopes(heads)), slopes, rtol=3e-7)
    # BLOOM adds m_h j to every query row; softmax ignores a constant per row, so m_h (j - i) is the same bias
    ours = alibi_bias(np.zeros(1), heads, T, T)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    causal = np.broadcast_to(j <= i, (T, T))
    expected = theirs[:, None, :] - slopes[:, None, None] * i
    # float32 slopes times distances up to 6
    np.testing.assert_allclose(ours[:, causal], expected[:, causal], rtol=3e-7, atol=3e-6)


def test_rotary_scores_depend_on_distance_only():
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 8))
    scores = [rope_forward(q, offset=s)[0] @ np.swapaxes(rope_forward(k, offset=s)[0], -1, -2) for s in (0, 37)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-10, atol=1e-12)


VARIANTS = [("learned", None), ("sinusoidal", None), ("rotary", None), ("alibi", 2), ("relative", None),
            ("rotary", 1), ("learned", 2)]


@pytest.mark.parametrize("positional,n_kv_head", VARIANTS)
def test_gpt_variant_cached_equals_uncached(positional, n_kv_head):
    backend.manual_seed(0)
    model = GPT(vocab_size=11, block_size=16, n_layer=2, n_head=4, d_model=16, dtype="float64",
                positional=positional, n_kv_head=n_kv_head).eval()
    idx = np.array([[1, 5, 2, 7, 3, 9, 4, 8, 6, 10], [2, 2, 3, 1, 7, 7, 5, 9, 0, 4]])
    with no_grad():
        full = model(idx)
        cache = model.new_cache(idx.shape[1])
        steps = [model(idx[:, :4], cache=cache)] + [model(idx[:, t:t + 1], cache=cache) for t in range(4, 10)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-11, atol=1e-12)
    a, b = (model.generate(idx[:, :3], 6, use_cache=c) for c in (True, False))
    np.testing.assert_array_equal(a, b)


def _cache_bytes(cache):
    return sum(a.nbytes for layer in cache.layers for a in (layer.self_attn.keys, layer.self_attn.values))


@pytest.mark.parametrize("n_kv_head", [8, 4, 2, 1])
def test_gqa_kv_cache_shrinks_by_the_group_size(n_kv_head):
    model = GPT(vocab_size=11, block_size=32, n_layer=2, n_head=8, d_model=32, dtype="float32",
                positional="rotary", n_kv_head=n_kv_head).eval()
    cache = model.new_cache(32)
    with no_grad():
        model(np.ones((3, 32), dtype=np.int64), cache=cache)
    # 2 layers x (keys + values) x B 3 x n_kv_head x T 32 x D 4 x 4 bytes
    assert _cache_bytes(cache) == 2 * 2 * 3 * n_kv_head * 32 * 4 * 4
    assert _cache_bytes(cache) * (8 // n_kv_head) == 2 * 2 * 3 * 8 * 32 * 4 * 4


def test_defaults_build_the_same_gpt():
    backend.manual_seed(3)
    default = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, dtype="float64")
    backend.manual_seed(3)
    explicit = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, dtype="float64",
                   positional="learned", n_kv_head=2)
    assert isinstance(default.blocks[0].self_attn, MultiheadAttention)
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert "wpe.weight" in default.state_dict()
    for (k, a), (_, b) in zip(default.state_dict().items(), explicit.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_bad_variant_arguments_are_refused():
    with pytest.raises(ValueError, match="positional"):
        GPT(vocab_size=5, block_size=4, n_layer=1, n_head=2, d_model=4, positional="absolute")
    with pytest.raises(ValueError, match="n_kv_head must be"):
        GPT(vocab_size=5, block_size=4, n_layer=1, n_head=4, d_model=8, n_kv_head=3)
    with pytest.raises(ValueError, match="num_kv_heads"):
        GroupedQueryAttention(8, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="even head size"):
        GroupedQueryAttention(6, 2, position="rotary")
    with pytest.raises(ValueError, match="attn_bias"):
        GroupedQueryAttention(4, 2, position="relative", dtype="float64")(np.ones((1, 2, 4)), attn_bias=np.ones(2))


@pytest.mark.parametrize("positional", ["sinusoidal", "rotary", "alibi", "relative"])
def test_left_padding_changes_no_logits(positional):
    """Distance-based positions ignore a row's shift; sinusoidal ones read position_ids like learned ones."""
    backend.manual_seed(4)
    model = GPT(vocab_size=11, block_size=16, n_layer=2, n_head=4, d_model=16, dtype="float64",
                positional=positional, n_kv_head=2).eval()
    with no_grad():
        alone = model(np.array([[3, 4, 5, 6]]))
        padded = model(np.array([[0, 0, 3, 4, 5, 6]]), attention_mask=np.array([[0, 0, 1, 1, 1, 1]]),
                       position_ids=np.array([[0, 0, 0, 1, 2, 3]]))
    np.testing.assert_allclose(padded[:, 2:], alone, rtol=1e-12, atol=1e-13)
