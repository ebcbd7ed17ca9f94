"""KV cache: incremental decoding gives the logits of a full forward (float64, 1e-10).

The reference is always the model's own full (uncached) forward, the path the
torch parity tests pin down; the cache must reproduce it at every step, for
prefill, single tokens, several tokens at once, padded batches and beam
reordering.
"""

import numpy as np
import pytest

from nptransformer import GPT, Seq2SeqTransformer, backend, no_grad
from nptransformer.generation import AttentionCache, KVCache
from nptransformer.gradcheck import check_grad

TOL = 1e-10


def gpt(**kw):
    args = dict(vocab_size=13, block_size=12, n_layer=2, n_head=2, d_model=8, dropout=0.0, dtype="float64")
    args.update(kw)
    return GPT(**args)


def seq2seq(positional="sinusoidal", tie=False, pad_id=0, norm_first=False):
    return Seq2SeqTransformer(9, 9, d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                              dim_feedforward=16, dropout=0.0, max_len=12, positional=positional,
                              share_embeddings=tie, tie_output=tie, pad_id=pad_id, norm_first=norm_first,
                              dtype="float64")


def host(a):
    return backend.to_numpy(a)


def feed_in_chunks(forward, T, chunks):
    """Call forward(start, stop) over consecutive chunks covering [0, T); concatenate the logits."""
    bounds = np.cumsum([0] + list(chunks))
    assert bounds[-1] == T
    return np.concatenate([host(forward(a, b)) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)


@pytest.mark.parametrize("chunks", [[4, 1, 1, 1, 1, 1, 1], [1] * 10, [3, 4, 3]])
def test_gpt_cache_matches_full_forward(backend_name, chunks):
    rng = np.random.default_rng(0)
    model = gpt(tie_weights=bool(len(chunks) % 2))
    idx = backend.asarray(rng.integers(0, 13, size=(3, 10)))
    with no_grad():
        full = host(model(idx))
        cache = KVCache(model.n_layer, model.block_size)
        cached = feed_in_chunks(lambda a, b: model(idx[:, a:b], cache=cache), 10, chunks)
    assert cache.length == 10
    np.testing.assert_allclose(cached, full, rtol=0, atol=TOL)


def test_gpt_cache_with_left_padding_matches_full_forward_and_unpadded_rows():
    rng = np.random.default_rng(1)
    model = gpt()
    lengths = np.array([9, 5, 2])
    T = 9
    real = np.arange(T)[None, :] >= (T - lengths)[:, None]  # left padding
    idx = np.where(real, rng.integers(1, 13, size=(3, T)), 0)
    pos = np.maximum(np.cumsum(real, axis=1) - 1, 0)
    mask = real.astype(np.int64)
    with no_grad():
        full = host(model(idx, attention_mask=mask, position_ids=pos))
        cache = KVCache(model.n_layer, T)
        cached = feed_in_chunks(lambda a, b: model(idx[:, a:b], attention_mask=mask[:, :b], position_ids=pos[:, a:b],
                                                   cache=cache), T, [6, 1, 2])
        alone = [host(model(idx[i:i + 1, T - n:]))[0] for i, n in enumerate(lengths)]
    np.testing.assert_allclose(cached, full, rtol=0, atol=TOL)
    for i, n in enumerate(lengths):  # padding changes nothing at the real positions
        np.testing.assert_allclose(cached[i, T - n:], alone[i], rtol=0, atol=TOL)


@pytest.mark.parametrize("positional,tie,norm_first", [("sinusoidal", False, False), ("learned", True, True)])
def test_seq2seq_cache_matches_full_decode(backend_name, positional, tie, norm_first):
    rng = np.random.default_rng(2)
    model = seq2seq(positional, tie, norm_first=norm_first)
    src = backend.asarray(np.array([[3, 4, 5, 6, 7], [8, 3, 0, 0, 0], [5, 0, 0, 0, 0]]))
    tgt = backend.asarray(np.concatenate([np.ones((3, 1), dtype=np.int64), rng.integers(1, 9, size=(3, 7))], 1))
    tgt[1, 5:] = 0  # a target with padding: its keys must stay masked in later steps
    with no_grad():
        full = host(model(src, tgt))
        memory = model.encode(src)
        cache = KVCache(2, 8, cross_attention=True)
        cached = feed_in_chunks(lambda a, b: model.decode(tgt[:, a:b], memory, src, cache=cache), 8, [1, 1, 3, 1, 2])
    np.testing.assert_allclose(cached, full, rtol=0, atol=TOL)


def test_cross_attention_memory_is_projected_once():
    model = seq2seq()
    src, tgt = np.array([[3, 4, 5]]), np.array([[1, 2, 3]])
    with no_grad():
        memory = model.encode(src)
        cache = KVCache(2, 3, cross_attention=True)
        model.decode(tgt[:, :1], memory, src, cache=cache)
        keys = cache.layers[0].cross_attn.keys
        # Later steps ignore the memory's values: only the cached projection is used.
        a = host(model.decode(tgt[:, 1:2], memory * 0.0, src, cache=cache))
    assert cache.layers[0].cross_attn.keys is not None and cache.layers[0].cross_attn.length == 3
    np.testing.assert_array_equal(host(cache.layers[0].cross_attn.keys), host(keys))
    with no_grad():
        ref = host(model(src, tgt[:, :2]))[:, 1:2]
    np.testing.assert_allclose(a, ref, rtol=0, atol=TOL)


def test_reorder_continues_the_chosen_rows():
    rng = np.random.default_rng(3)
    model = gpt()
    idx = rng.integers(0, 13, size=(3, 6))
    rows = np.array([2, 0, 0])  # beam search: row 0 continues row 2's prefix, rows 1 and 2 continue row 0's
    with no_grad():
        cache = KVCache(model.n_layer, 8)
        model(idx[:, :5], cache=cache)
        cache.reorder(rows)
        step = host(model(idx[rows, 5:6], cache=cache))
        ref = host(model(idx[rows]))[:, 5:6]
    np.testing.assert_allclose(step, ref, rtol=0, atol=TOL)


def test_cache_is_preallocated_and_written_in_place():
    c = AttentionCache(capacity=5)
    x = np.arange(2 * 3 * 2 * 4, dtype=np.float64).reshape(2, 3, 2, 4)
    c.append(x, -x)
    buffer = c._k
    k, v = c.append(x[:, :, :1], -x[:, :, :1])
    assert c._k is buffer and buffer.shape == (2, 3, 5, 4)  # no reallocation, no concatenation
    np.testing.assert_array_equal(k, np.concatenate([x, x[:, :, :1]], axis=2))
    np.testing.assert_array_equal(v, -k)
    with pytest.raises(ValueError, match="at most 5 positions"):
        c.append(np.concatenate([x, x], axis=2), np.concatenate([x, x], axis=2))  # 3 + 4 > 5
    with pytest.raises(ValueError, match=r"\(B, H, D\)"):
        c.append(x[:1, :, :1], x[:1, :, :1])


def test_cache_needs_no_grad_and_fits_block_size():
    model = gpt()
    idx = np.array([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="no_grad"):
        model(idx, cache=KVCache(model.n_layer, 12))
    with no_grad():
        cache = KVCache(model.n_layer, 12)
        model(np.ones((1, 10), dtype=np.int64), cache=cache)
        with pytest.raises(ValueError, match="exceeds block_size 12"):
            model(idx, cache=cache)
        with pytest.raises(ValueError, match="cache has 1 layers"):
            model(idx, cache=KVCache(1, 12))
        with pytest.raises(ValueError, match="attention_mask must have shape"):
            model(idx, attention_mask=np.ones((1, 2), dtype=np.int64))


def test_gpt_backward_with_mask_and_positions_matches_finite_differences():
    # position_ids (B, T) take a per-row path through the position table's backward.
    model = GPT(vocab_size=7, block_size=6, n_layer=1, n_head=2, d_model=4, dtype="float64")
    real = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = np.maximum(np.cumsum(real, axis=1) - 1, 0)
    idx = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])
    check_grad(model, [idx], {"attention_mask": real, "position_ids": pos}, wrt=()).raise_if_failed()
