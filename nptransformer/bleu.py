"""Corpus BLEU (Papineni et al., 2002): clipped n-gram precisions, their geometric mean, a brevity penalty.

    p_n  = sum over sentences of clipped matching n-grams / sum of hypothesis n-grams
    BP   = 1 if c > r else exp(1 - r / c)        c, r: total hypothesis and reference lengths
    BLEU = BP * exp(mean_n log p_n),  n = 1..max_order

One reference per sentence; tokens are any hashable items (words, ids).
Counts are summed over the corpus before dividing, as in the paper and
sacreBLEU, not averaged per sentence. ``smooth`` adds one to every
numerator and denominator of n > 1 (Lin and Och's smoothing 1), so a short
corpus without any 4-gram match still scores above 0.

>>> corpus_bleu([["the", "cat", "sat", "on", "the", "mat"]], [["the", "cat", "sat", "on", "the", "mat"]])
1.0
>>> round(corpus_bleu([["the", "cat"]], [["the", "cat", "sat", "on", "the", "mat"]], max_order=2), 4)
0.1353
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Sequence


def _ngrams(tokens: Sequence[Hashable], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]],
                max_order: int = 4, smooth: bool = False) -> float:
    """BLEU in [0, 1] of tokenised ``hypotheses`` against one tokenised reference each (equal counts)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses and references must pair up, got {len(hypotheses)} hypotheses and "
                         f"{len(references)} references")
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    for name, corpus in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(corpus, str) or any(isinstance(s, str) for s in corpus):
            raise TypeError(f"{name} must be sequences of tokens (split the strings first), got a str")
    matches, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_order + 1):
            h, r = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0:
        return 0.0
    log_p = 0.0
    for n, (m, t) in enumerate(zip(matches, totals), start=1):
        if smooth and n > 1:
            m, t = m + 1, t + 1
        if m == 0 or t == 0:
            return 0.0
        log_p += math.log(m / t) / max_order
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p)
