"""corpus_bleu against hand-computed values of the paper's formula, and its refusals."""

import math

import pytest

from nptransformer.bleu import corpus_bleu


def test_clipping_the_papers_example():
    # Papineni et al.'s "the the the the the the the" against "the cat is on the mat": unigram p = 2/7
    hyp, ref = ["the"] * 7, "the cat is on the mat".split()
    assert corpus_bleu([hyp], [ref], max_order=1) == pytest.approx(2 / 7)


def test_counts_are_summed_over_the_corpus_before_dividing():
    hyps = [["a", "b", "c", "d"], ["x", "y"]]
    refs = [["a", "b", "c", "d"], ["x", "z"]]
    # unigrams 5/6, bigrams 3/4 (a b, b c, c d match; x y does not); lengths equal: BP = 1
    assert corpus_bleu(hyps, refs, max_order=2) == pytest.approx(math.sqrt(5 / 6 * 3 / 4))
    assert corpus_bleu(hyps[::-1], refs[::-1], max_order=2) == pytest.approx(math.sqrt(5 / 6 * 3 / 4))


def test_brevity_penalty_and_smoothing():
    hyp, ref = ["a", "b", "c"], ["a", "b", "c", "d", "e", "f"]
    assert corpus_bleu([hyp], [ref], max_order=3) == pytest.approx(math.exp(1 - 6 / 3))
    assert corpus_bleu([hyp], [ref]) == 0.0  # no 4-gram at all
    # smoothing 1: 4-grams (0 + 1) / (0 + 1)
    assert corpus_bleu([hyp], [ref], smooth=True) == pytest.approx(math.exp(1 - 2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="pair up"):
        corpus_bleu([["a"]], [])
    with pytest.raises(TypeError, match="tokens"):
        corpus_bleu(["a b"], ["a b"])
    with pytest.raises(ValueError, match="max_order"):
        corpus_bleu([["a"]], [["a"]], max_order=0)
