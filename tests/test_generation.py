"""Decoding: GPT.generate, greedy and beam search for Seq2Seq, sampling filters, bad input.

References are independent of the decoding code: naive loops over the
model's full forward, hand-computed top-k / top-p sets, exhaustive search
over every target sequence, and the GNMT formula.
"""

import itertools
import math

import numpy as np
import pytest

from nptransformer import GPT, Seq2SeqTransformer, backend, no_grad
from nptransformer.generation import (beam_search, gnmt_length_penalty, greedy_decode, next_tokens, top_k_filter,
                                      top_p_filter)

BOS, EOS, PAD = 1, 2, 0


def gpt(seed=0, **kw):
    backend.manual_seed(seed)
    args = dict(vocab_size=13, block_size=12, n_layer=2, n_head=2, d_model=8, dtype="float64")
    args.update(kw)
    return GPT(**args)


def seq2seq(seed=0, vocab=9, max_len=12, pad_id=PAD):
    backend.manual_seed(seed)
    return Seq2SeqTransformer(9, vocab, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=2,
                              dim_feedforward=16, dropout=0.0, max_len=max_len, pad_id=pad_id, dtype="float64")


SRC = np.array([[3, 4, 5, 6], [7, 8, 3, PAD], [5, 4, PAD, PAD]])


def naive_gpt_greedy(model, idx, n, window=None):
    """argmax of a full forward over the (last ``window``) tokens, n times: nanoGPT's loop."""
    idx = np.asarray(idx)
    with no_grad():
        for _ in range(n):
            cond = idx if window is None else idx[:, -window:]
            idx = np.concatenate([idx, np.argmax(model(cond)[:, -1], axis=-1)[:, None]], axis=1)
    return idx


def log_prob_of(model, src, tokens):
    """log P(tokens[1:] | src, tokens[0]) by one teacher-forced forward."""
    tokens = np.asarray(tokens)[None, :]
    with no_grad():
        logits = model(np.asarray(src)[None, :], tokens[:, :-1])[0]
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return float(sum(logp[i, t] for i, t in enumerate(tokens[0, 1:])))


# -- GPT.generate -------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generate_matches_naive_loop(use_cache):
    model = gpt()
    idx = np.random.default_rng(0).integers(0, 13, size=(3, 4))
    out = model.generate(idx, 6, use_cache=use_cache)
    np.testing.assert_array_equal(out, naive_gpt_greedy(model, idx, 6))


def test_generate_gives_the_same_tokens_on_every_backend(backend_name):
    with backend.use("numpy"):
        model = gpt()
        idx = np.array([[3, 1, 4], [1, 5, 9]])
        ref = model.generate(idx, 4, do_sample=True, seed=2)
    model.to(backend=backend_name)
    for use_cache in (True, False):
        out = model.generate(backend.asarray(idx), 4, do_sample=True, seed=2, use_cache=use_cache)
        assert backend.backend_of(out) == backend_name
        np.testing.assert_array_equal(backend.to_numpy(out), ref)
    with backend.use("numpy"):
        s2s = seq2seq(vocab=5)
        greedy, beams = greedy_decode(s2s, SRC, 6, BOS, EOS), beam_search(s2s, SRC, 3, 6, bos_id=BOS, eos_id=EOS)
    s2s.to(backend=backend_name)
    np.testing.assert_array_equal(backend.to_numpy(greedy_decode(s2s, backend.asarray(SRC), 6, BOS, EOS)), greedy)
    assert beam_search(s2s, backend.asarray(SRC), 3, 6, bos_id=BOS, eos_id=EOS) == beams


def test_seeded_sampling_is_reproducible_with_and_without_cache():
    model = gpt()
    idx = np.random.default_rng(1).integers(0, 13, size=(4, 3))
    kw = dict(do_sample=True, temperature=1.3, top_k=8, top_p=0.9, seed=7)
    a = model.generate(idx, 8, use_cache=True, **kw)
    np.testing.assert_array_equal(a, model.generate(idx, 8, use_cache=False, **kw))
    np.testing.assert_array_equal(a, model.generate(idx, 8, **kw))
    assert not np.array_equal(a, model.generate(idx, 8, use_cache=True, **{**kw, "seed": 8}))


def test_temperature_to_zero_is_greedy():
    model = gpt(seed=3)
    idx = np.random.default_rng(2).integers(0, 13, size=(3, 2))
    greedy = model.generate(idx, 8)
    np.testing.assert_array_equal(model.generate(idx, 8, do_sample=True, temperature=1e-8, seed=0), greedy)


def test_left_padded_batch_gives_each_prompt_its_own_continuation():
    model = gpt(seed=4)
    prompts = [[5, 6, 7, 8], [3], [9, 10]]
    T = max(map(len, prompts))
    idx = np.array([[PAD] * (T - len(p)) + p for p in prompts])
    mask = np.array([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    for use_cache in (True, False):
        out = model.generate(idx, 5, attention_mask=mask, use_cache=use_cache)
        for row, p in zip(out, prompts):
            np.testing.assert_array_equal(row[T - len(p):], model.generate(np.array([p]), 5)[0])
    sampled = model.generate(idx, 5, attention_mask=mask.astype(bool), do_sample=True, seed=3)
    np.testing.assert_array_equal(sampled, model.generate(idx, 5, attention_mask=mask, do_sample=True, seed=3,
                                                          use_cache=False))


def test_prompt_longer_than_block_size_is_refused_unless_cropped():
    model = gpt(block_size=6)
    idx = np.random.default_rng(5).integers(0, 13, size=(2, 8))
    with pytest.raises(ValueError, match="block_size is 6; pass crop=True"):
        model.generate(idx, 1)
    with pytest.raises(ValueError, match="exceeds block_size 6; pass crop=True"):
        model.generate(idx[:, :4], 3)
    for use_cache in (True, False):  # the sliding window: each step sees the last 6 tokens
        np.testing.assert_array_equal(model.generate(idx, 5, crop=True, use_cache=use_cache),
                                      naive_gpt_greedy(model, idx, 5, window=6))
        np.testing.assert_array_equal(model.generate(idx[:, :3], 6, crop=True, use_cache=use_cache),
                                      naive_gpt_greedy(model, idx[:, :3], 6, window=6))


def test_generate_keeps_modes_and_turns_dropout_off():
    model = gpt(dropout=0.5)
    model.train()
    model.blocks[0].train(False)
    idx = np.array([[1, 2, 3]])
    out = model.generate(idx, 4)
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    model.eval()
    np.testing.assert_array_equal(out, naive_gpt_greedy(model, idx, 4))
    assert model.generate(idx, 0).shape == (1, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(do_sample=True, temperature=0.0), "temperature must be a positive number"),
    (dict(do_sample=True, temperature=-1.0), "temperature must be a positive number"),
    (dict(top_k=0), "top_k must be None or an integer >= 1"),
    (dict(top_p=0.0), r"top_p must be None or a number in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be None or a number in \(0, 1\]"),
    (dict(attention_mask=np.array([[1, 1, 0]])), "LEFT padding"),
    (dict(attention_mask=np.array([[0, 2, 1]])), "0 .padding. and 1"),
])
def test_generate_rejects_bad_arguments(kwargs, match):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        gpt().generate(np.array([[1, 2, 3]]), **kwargs)


# -- sampling primitives --------------------------------------------------------

def test_top_k_and_top_p_keep_the_hand_computed_sets():
    probs = np.array([[0.05, 0.4, 0.1, 0.25, 0.2], [0.2, 0.2, 0.2, 0.2, 0.2]])
    logits = np.log(probs)
    kept = lambda a: np.isfinite(a).tolist()  # noqa: E731
    assert kept(top_k_filter(logits, 2)) == [[False, True, False, True, False], [True] * 5]  # ties with the 2nd stay
    assert kept(top_k_filter(logits, 1))[0] == [False, True, False, False, False]
    assert kept(top_k_filter(logits, 9)) == [[True] * 5] * 2
    # Row 0 sorted: 0.4, 0.25, 0.2, 0.1, 0.05 -> mass ahead 0, 0.4, 0.65, 0.85, 0.95.
    assert kept(top_p_filter(logits, 0.5))[0] == [False, True, False, True, False]
    assert kept(top_p_filter(logits, 0.66))[0] == [False, True, False, True, True]
    assert kept(top_p_filter(logits, 0.3))[0] == [False, True, False, False, False]  # the top token always stays
    assert kept(top_p_filter(logits, 0.5))[1] == [True, True, True, False, False]  # ties: vocabulary order
    assert kept(top_p_filter(logits, 1.0)) == [[True] * 5] * 2


def test_sampling_frequencies_follow_the_filtered_distribution():
    logits = np.tile(np.log(np.array([0.05, 0.4, 0.1, 0.25, 0.2])), (40000, 1))
    g = backend.Generator(0)
    freq = np.bincount(next_tokens(logits, do_sample=True, top_k=3, generator=g), minlength=5) / 40000
    np.testing.assert_allclose(freq, [0, 0.4 / 0.85, 0, 0.25 / 0.85, 0.2 / 0.85], atol=0.01)
    freq = np.bincount(next_tokens(logits, do_sample=True, temperature=0.5, generator=g), minlength=5) / 40000
    sharp = np.array([0.05, 0.4, 0.1, 0.25, 0.2]) ** 2
    np.testing.assert_allclose(freq, sharp / sharp.sum(), atol=0.01)


# -- Seq2Seq: greedy and beam search ---------------------------------------------

def naive_seq2seq_greedy(model, src, max_len):
    """One source at a time, full forward every step, stop at EOS."""
    rows = []
    with no_grad():
        for s in src:
            tgt = [BOS]
            while len(tgt) <= max_len and tgt[-1] != EOS or len(tgt) == 1:
                tgt.append(int(np.argmax(model(s[None, :], np.array([tgt]))[0, -1])))
            rows.append(tgt)
    return rows


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_decode_matches_naive_loop(use_cache):
    for seed in range(3):
        model = seq2seq(seed)
        out = greedy_decode(model, SRC, 8, BOS, EOS, use_cache=use_cache)
        ref = naive_seq2seq_greedy(model, SRC, 8)
        assert out.shape[1] == max(map(len, ref))
        for row, r in zip(out.tolist(), ref):
            assert row[:len(r)] == r and all(t == PAD for t in row[len(r):])


def test_beam_width_one_is_greedy():
    for seed, alpha in itertools.product(range(4), (0.0, 0.6, 1.0)):
        model = seq2seq(seed, vocab=5)  # a small vocabulary makes EOS come early and often
        greedy = greedy_decode(model, SRC, 7, BOS, EOS).tolist()
        beams = beam_search(model, SRC, 1, 7, alpha, bos_id=BOS, eos_id=EOS)
        for g, [hyp] in zip(greedy, beams):
            n = g.index(EOS) + 1 if EOS in g else len(g)
            assert list(hyp.tokens) == g[:n]
            assert hyp.finished == (EOS in g)


def test_beam_search_with_a_full_beam_finds_the_exhaustive_optimum():
    # alpha = 0: the score is the log-probability and the stopping rule is exact, so a beam wide
    # enough to hold every prefix must return the best complete sequences of all.
    V, L = 4, 3  # tokens 0 (pad), 1 (BOS), 2 (EOS), 3
    model = seq2seq(5, vocab=V, max_len=L)
    src = np.array([[3, 3, 1], [1, 3, 0]])
    results = beam_search(model, src, V ** L, L, 0.0, bos_id=BOS, eos_id=EOS, n_best=3)
    for s, hyps in zip(src, results):
        every = []
        for n in range(1, L + 1):
            for body in itertools.product(range(V), repeat=n):
                if EOS in body[:-1] or (n < L and body[-1] != EOS):
                    continue  # complete: ended by EOS (nothing follows it) or stopped at max_len
                every.append(((BOS,) + body, log_prob_of(model, s, (BOS,) + body)))
        every.sort(key=lambda e: -e[1])
        assert [h.tokens for h in hyps] == [e[0] for e in every[:3]]
        np.testing.assert_allclose([h.log_prob for h in hyps], [e[1] for e in every[:3]], rtol=0, atol=1e-10)


def test_beam_scores_are_length_penalised_log_probs_and_cache_agrees():
    model = seq2seq(6, vocab=6)
    a = beam_search(model, SRC, 4, 6, 0.6, bos_id=BOS, eos_id=EOS, n_best=3)
    b = beam_search(model, SRC, 4, 6, 0.6, bos_id=BOS, eos_id=EOS, n_best=3, use_cache=False)
    assert [[h.tokens for h in r] for r in a] == [[h.tokens for h in r] for r in b]
    for s, hyps in zip(SRC, a):
        assert len(hyps) == 3 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            length = len(h.tokens) - 1
            assert h.finished == (h.tokens[-1] == EOS)
            assert math.isclose(h.log_prob, log_prob_of(model, s, h.tokens), abs_tol=1e-10)
            assert math.isclose(h.score, h.log_prob / (((5 + length) / 6) ** 0.6), rel_tol=1e-12)


def test_gnmt_length_penalty_closed_form():
    assert gnmt_length_penalty(1, 0.6) == 1.0
    assert math.isclose(gnmt_length_penalty(7, 0.6), (12 ** 0.6) / (6 ** 0.6))
    assert gnmt_length_penalty(9, 0.0) == 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(beam_width=0), "beam_width must be an integer >= 1"),
    (dict(n_best=3), r"n_best must be <= beam_width \(2\)"),
    (dict(max_len=0), "max_len must be an integer >= 1"),
    (dict(max_len=13), "exceeds the model's max_len 12"),
    (dict(eos_id=9), r"eos_id must be a token id in \[0, 9\)"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
])
def test_beam_search_rejects_bad_arguments(kwargs, match):
    kwargs = {"beam_width": 2, "max_len": 5, "bos_id": BOS, "eos_id": EOS, **kwargs}
    with pytest.raises(ValueError, match=match):
        beam_search(seq2seq(), SRC, **kwargs)


def test_greedy_decode_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bos_id must be a token id"):
        greedy_decode(seq2seq(), SRC, 5, -1, EOS)
    with pytest.raises(TypeError, match="src must be an integer array"):
        greedy_decode(seq2seq(), SRC.astype(float), 5, BOS, EOS)
