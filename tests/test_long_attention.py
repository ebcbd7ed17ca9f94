"""Long-sequence attention: the tiled exact kernel and block-sparse sliding-window attention.

- sliding-window attention equals dense attention under the equivalent mask
  (values and all gradients, 1e-12), under numpy and strict;
- its score blocks are linear in T for a fixed window (element counts, not time);
- the tiled kernel's dispatch: long key rows only, so T = 128 keeps the blocked kernel;
- the tiled kernel leaves the generator where the reference does, and recomputes .probs;
- the tiled kernel stores no (Tq, Tk) array (its context's bytes are linear in T);
- linear attention equals its O(T²) form (elu + 1) at any chunk length, gradients too, and
  FAVOR+'s error against softmax attention falls as the number of random features grows.
(The tiled kernel's values and gradients against the reference, dropout included, and
finite differences are in tests/test_kernels.py's sweep, which covers every kernel.)
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import backend, testing
from nptransformer.functional import (favor_features, linear_attention_backward, linear_attention_forward,
                                      scaled_dot_product_attention_backward, scaled_dot_product_attention_forward,
                                      sliding_window_attention_backward, sliding_window_attention_forward,
                                      sliding_window_mask)
from nptransformer.kernels import KERNELS, choose
from nptransformer.registry import OPS

TILED = KERNELS["scaled_dot_product_attention.tiled"]


@given(data=st.data())
def test_sliding_window_equals_dense_attention_with_its_mask(backend_name, data):
    case = data.draw(OPS["sliding_window_attention"].cases(testing))
    q, k, v = (backend.asarray(a) for a in case.args)
    kw = case.kwargs
    out, ctx = sliding_window_attention_forward(q, k, v, **kw)
    mask = backend.to_numpy(sliding_window_mask(q.shape[-2], kw["window"], kw["global_tokens"], kw["is_causal"]))
    drawn = ctx.dense_mask()
    assert not np.any(drawn & ~mask), "a random block removed a pair the window allows"
    if kw["random_blocks"] == 0:
        assert np.array_equal(drawn, mask)
    if kw["is_causal"]:
        assert np.all(np.triu(~drawn, 1) == 0), "a random block let a query see a later key"
    mask = backend.asarray(drawn)
    want, want_ctx = scaled_dot_product_attention_forward(q, k, v, mask, scale=kw["scale"])
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(want), rtol=1e-12, atol=1e-12)
    dout = backend.asarray(np.random.default_rng(1).normal(size=tuple(out.shape)))
    got = sliding_window_attention_backward(dout, ctx)
    ref = scaled_dot_product_attention_backward(dout, want_ctx)[:3]
    for name, g, w in zip("dq dk dv".split(), got, ref):
        np.testing.assert_allclose(backend.to_numpy(g), backend.to_numpy(w), rtol=1e-12, atol=1e-12, err_msg=name)


def test_random_blocks_add_whole_key_blocks_outside_the_band():
    q = np.random.default_rng(0).normal(size=(1, 24, 4))
    _, plain = sliding_window_attention_forward(q, q, q, window=1)
    _, ctx = sliding_window_attention_forward(q, q, q, window=1, random_blocks=2, seed=3)
    extra = plain.dense_mask() & ~ctx.dense_mask()  # pairs only the random blocks allow
    assert extra.sum() == 2 * 2 * 2 * 12  # 12 query blocks of 2 rows, each 2 random blocks of 2 keys
    _, again = sliding_window_attention_forward(q, q, q, window=1, random_blocks=2, seed=3)
    assert np.array_equal(again.dense_mask(), ctx.dense_mask())  # one seed, one pattern


def test_sliding_window_mask_is_the_pattern_by_hand():
    m = sliding_window_mask(4, window=1, global_tokens=0, is_causal=True)
    assert m.tolist() == [[False, True, True, True], [False, False, True, True],
                          [True, False, False, True], [True, True, False, False]]


def test_sliding_window_scores_grow_linearly_in_t():
    def score_elements(t):
        q = np.zeros((1, t, 2))
        _, ctx = sliding_window_attention_forward(q, q, q, window=8, global_tokens=2)
        return sum(b.softmax_ctx[0].size for b in ctx.blocks)

    small, large = score_elements(256), score_elements(1024)
    assert large <= 4 * small + 4 * 1024  # linear, up to the global rows (2 x T each)
    assert large < 1024 * 1024 / 10  # far below the dense T x T


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_sliding_window_rejects_a_bad_window(bad):
    q = np.zeros((3, 2))
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention_forward(q, q, q, window=bad)


def test_tiled_kernel_runs_for_long_keys_only():
    short, long = np.zeros((1, 2, 512, 8)), np.zeros((1, 2, TILED.settings["min_keys"], 8))
    assert choose("scaled_dot_product_attention", short, short, short).name in (
        "scaled_dot_product_attention.keys_major", "scaled_dot_product_attention.blocked")
    assert choose("scaled_dot_product_attention", long, long, long) is TILED


def test_tiled_dropout_leaves_the_generator_where_the_reference_does():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 6, 4)), rng.normal(size=(2, 3, 6, 2))
    kernel = TILED.configured(block_q=2, block_k=4)
    g1, g2 = backend.Generator(7), backend.Generator(7)
    g1.uniform((1,)), g2.uniform((1,))
    g1.integers(0, 5, (3,)), g2.integers(0, 5, (3,))
    want, want_ctx = scaled_dot_product_attention_forward(q, k, v, dropout_p=0.3, generator=g1)
    got, ctx = kernel.forward(q, k, v, dropout_p=0.3, generator=g2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert g1.state() == g2.state()
    np.testing.assert_allclose(ctx.probs, want_ctx.probs, rtol=1e-12, atol=1e-15)


def test_tiled_context_stores_no_square_array():
    def context_bytes(t):
        q = np.random.default_rng(0).normal(size=(1, t, 4))
        _, ctx = TILED.forward(q, q, q, is_causal=True)
        return sum(a.nbytes for a in (ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse))

    assert context_bytes(512) == 4 * context_bytes(128)


def _quadratic_linear_attention(q, k, v, causal, phi):
    """The O(T²) form: weights phi(q_i) . phi(k_j), masked, normalised per row."""
    a = phi(q) @ np.swapaxes(phi(k), -1, -2)
    if causal:
        a = np.tril(a)
    return (a @ v) / a.sum(-1, keepdims=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_linear_attention_equals_its_quadratic_form_at_any_chunk(causal, chunk):
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 7, 4)), rng.normal(size=(2, 3, 7, 4)), rng.normal(size=(2, 3, 7, 5))
    out, _ = linear_attention_forward(q, k, v, is_causal=causal, chunk=chunk)
    elu1 = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))  # noqa: E731
    np.testing.assert_allclose(out, _quadratic_linear_attention(q, k, v, causal, elu1), rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_gradients_are_independent_of_the_chunk(causal):
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(2, 9, 3)), rng.normal(size=(2, 9, 3)), rng.normal(size=(2, 9, 2))
    w = favor_features(6, 3, backend.Generator(0))
    dout = rng.normal(size=(2, 9, 2))
    grads = []
    for chunk in (1, 4, 9):
        _, ctx = linear_attention_forward(q, k, v, causal, "favor", w, chunk)
        grads.append(linear_attention_backward(dout, ctx))
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_favor_error_against_softmax_attention_falls_with_more_features():
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=(64, 8)) * 0.5 for _ in range(3))
    exact, _ = scaled_dot_product_attention_forward(q, k, v)

    def error(m):
        errs = [np.abs(linear_attention_forward(q, k, v, feature_map="favor",
                                                features=favor_features(m, 8, backend.Generator(s)))[0] - exact).mean()
                for s in range(4)]
        return float(np.mean(errs))

    e16, e256, e4096 = error(16), error(256), error(4096)
    assert e4096 < e256 < e16
    assert e4096 < 0.25 * e16  # the Monte-Carlo error falls about as 1/sqrt(m)


def test_linear_attention_rejects_unknown_feature_map_and_missing_features():
    q = np.zeros((3, 2))
    with pytest.raises(ValueError, match="feature_map"):
        linear_attention_forward(q, q, q, feature_map="relu")
    with pytest.raises(ValueError, match="features"):
        linear_attention_forward(q, q, q, feature_map="favor")


def test_gpt_attention_option_builds_the_variant_in_every_block_and_keeps_the_default():
    from nptransformer import GPT
    from nptransformer.nn import EfficientSelfAttention, MultiheadAttention

    plain = GPT(vocab_size=7, block_size=8, n_layer=2, n_head=2, d_model=8, generator=backend.Generator(0))
    assert all(isinstance(b.self_attn, MultiheadAttention) for b in plain.blocks)
    model = GPT(vocab_size=7, block_size=8, n_layer=2, n_head=2, d_model=8, generator=backend.Generator(0),
                attention={"kind": "sliding_window", "window": 2})
    assert all(isinstance(b.self_attn, EfficientSelfAttention) for b in model.blocks)
    assert sorted(model.state_dict()) == sorted(plain.state_dict())  # the same parameters: checkpoints move across
    with pytest.raises(ValueError, match="attention"):
        GPT(vocab_size=7, block_size=8, n_layer=1, n_head=2, d_model=8, positional="rotary",
            attention={"kind": "linear"})


def test_a_window_covering_the_sequence_is_exact_attention_in_an_encoder_layer():
    from nptransformer.nn import EfficientSelfAttention, TransformerEncoderLayer

    rng = np.random.default_rng(3)
    exact = TransformerEncoderLayer(8, 2, 16, dropout=0.0, dtype="float64")
    windowed = TransformerEncoderLayer(8, 2, 16, dropout=0.0, dtype="float64",
                                       attention={"kind": "sliding_window", "window": 6})
    assert isinstance(windowed.self_attn, EfficientSelfAttention)
    windowed.load_state_dict(exact.state_dict())
    x, dy = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8))
    np.testing.assert_allclose(windowed(x, is_causal=True), exact(x, is_causal=True), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(windowed.backward(dy), exact.backward(dy), rtol=1e-11, atol=1e-13)


def test_efficient_attention_refuses_masks_it_cannot_apply():
    from nptransformer.nn import EfficientSelfAttention

    layer = EfficientSelfAttention(8, 2, kind="linear", dtype="float64")
    with pytest.raises(ValueError, match="key_padding_mask"):
        layer(np.zeros((1, 3, 8)), key_padding_mask=np.zeros((1, 3), dtype=bool))


def test_tiled_kernel_matches_torch_attention_with_a_padding_mask_and_a_bias():
    torch = pytest.importorskip("torch", reason="torch is the independent reference here")
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(2, 3, 300, 8)), rng.normal(size=(2, 3, 300, 8)), rng.normal(size=(2, 3, 300, 5))
    padding = np.zeros((2, 1, 1, 300), dtype=bool)
    padding[1, ..., 250:] = True  # True = may not attend (the library's convention)
    bias = rng.normal(size=(3, 300, 300)) * 0.1
    dout = rng.normal(size=(2, 3, 300, 5))
    kernel = TILED.configured(block_q=64, block_k=96)
    out, ctx = kernel.forward(q, k, v, attn_mask=padding, is_causal=False, bias=bias)
    dq, dk, dv, dbias = kernel.backward(dout, ctx)
    tq, tk, tv, tb = (torch.tensor(a, requires_grad=True) for a in (q, k, v, bias))
    additive = torch.where(torch.tensor(padding), float("-inf"), 0.0).double() + tb
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=additive)
    want.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, got, t in (("dq", dq, tq), ("dk", dk, tk), ("dv", dv, tv), ("dbias", dbias, tb)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_tiled_gradient_is_exactly_zero_for_a_query_that_sees_one_key():
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 6, 3))
    kernel = TILED.configured(block_q=2, block_k=2)
    _, ctx = kernel.forward(q, k, v, is_causal=True)
    dq, dk, dv, _ = kernel.backward(rng.normal(size=(3, 6, 3)), ctx)
    assert np.all(dq[:, 0] == 0.0)  # query 0 sees key 0 only: its output is v_0 whatever q_0 is
    assert np.all(dq[:, 1] != 0.0)
