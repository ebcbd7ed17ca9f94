"""Beam search for encoder-decoder models, with the GNMT length penalty and n-best lists.

Each source keeps ``beam_width`` alive hypotheses. A step extends every one
by every token and ranks the candidates by total log-probability; walking
the best 2 x beam_width in order, a candidate ending in EOS becomes a
finished hypothesis (only when it ranks among the best beam_width, so that
beam_width = 1 is exactly greedy decoding), any other one stays alive until
beam_width are alive again. Hypotheses are compared by the GNMT score
(Wu et al., 2016)

    score(Y) = log P(Y | X) / lp(Y),   lp(Y) = (5 + |Y|)^alpha / 6^alpha,

|Y| counting the generated tokens (EOS included, BOS not). alpha = 0 ranks by
log-probability, which favours short outputs since every token costs
probability; alpha > 0 divides by a penalty that grows with length.

A source is done when it holds ``n_best`` finished hypotheses and the worst
of them scores at least as high as every alive one does at the current
length (for n_best = 1: the best finished hypothesis beats all alive ones).
With alpha = 0 this is exact, since log-probabilities only fall as a
hypothesis grows. With alpha > 0 a growing penalty could in principle let an
alive hypothesis overtake, the trade Hugging Face's and GNMT's searches make
too. At ``max_len`` the alive hypotheses join the list as unfinished.

>>> round(gnmt_length_penalty(1, 0.6), 12), round(gnmt_length_penalty(5, 1.0), 12)
(1.0, 1.666666666667)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks
from .inference import inference
from .seq2seq import Seq2SeqStepper, check_decoding_args


@dataclass(frozen=True)
class Hypothesis:
    """One decoded target: ``tokens`` (BOS first, EOS last when ``finished``), its total
    ``log_prob`` = log P(tokens | source) and its length-penalised ``score``."""

    tokens: tuple[int, ...]
    log_prob: float
    score: float
    finished: bool


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """lp = (5 + length)^alpha / 6^alpha: 1 for a single token, growing with length when alpha > 0."""
    return ((5.0 + length) / 6.0) ** alpha


def check_beam_args(beam_width: int, n_best: int, length_penalty: float) -> None:
    """The checks every beam search shares: beam_width >= 1, 1 <= n_best <= beam_width, a finite alpha."""
    _checks.check_int_at_least("beam_width", beam_width, 1)
    _checks.check_int_at_least("n_best", n_best, 1)
    if n_best > beam_width:
        raise ValueError(f"n_best must be <= beam_width ({beam_width}), got {n_best}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number (GNMT's alpha), got {length_penalty!r}")


def beam_search(model: Any, src: Any, beam_width: int, max_len: int, length_penalty: float = 0.6, *,
                bos_id: int, eos_id: int, n_best: int = 1, use_cache: bool = True) -> list[list[Hypothesis]]:
    """Beam search translation of src (B, S) ids -> for each source, its ``n_best`` best :class:`Hypothesis`.

    ``beam_width`` alive hypotheses per source, at most ``max_len`` tokens
    after BOS, GNMT ``length_penalty`` alpha (0 = none), ``n_best <=
    beam_width`` results per source, best score first. Runs in eval mode
    under ``no_grad``.
    """
    check_decoding_args(model, src, max_len, bos_id, eos_id)
    check_beam_args(beam_width, n_best, length_penalty)
    B, k = src.shape[0], beam_width
    rows = np.arange(B * k)
    tokens = np.full((B * k, 1), bos_id, dtype=np.int64)
    log_probs = np.full((B, k), -np.inf)
    log_probs[:, 0] = 0.0  # one live beam at the start: k copies of BOS would fill the beam with duplicates
    results: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    with inference(model, src):
        step = Seq2SeqStepper(model, src, use_cache, capacity=max_len)
        step.reorder(rows // k)  # row b*k + j decodes source b
        for t in range(1, max_len + 1):  # t: tokens after BOS once this step is taken
            logits = step.last_logits(tokens)  # (B*k, V)
            V = logits.shape[-1]
            candidates = log_probs[:, :, None] + _log_softmax(logits).reshape(B, k, V)  # (B, k, V)
            parents, new, new_log_probs = rows.copy(), np.full(B * k, eos_id), log_probs.copy()
            for b in np.flatnonzero(~done):
                found, alive = _extend(candidates[b].reshape(-1), V, k, eos_id)
                for beam, logp in found:
                    results[b].append(_hypothesis(tokens[b * k + beam], eos_id, logp, t, length_penalty, True))
                for j, (beam, token, logp) in enumerate(alive):
                    parents[b * k + j], new[b * k + j], new_log_probs[b, j] = b * k + beam, token, logp
                done[b] = _is_done(results[b], new_log_probs[b], n_best, gnmt_length_penalty(t, length_penalty))
            tokens = np.concatenate([tokens[parents], new[:, None]], axis=1)  # (B*k, t) -> (B*k, t + 1)
            log_probs = new_log_probs
            if done.all() or t == max_len:
                break
            step.reorder(parents)
    for b in np.flatnonzero(~done):  # stopped by max_len: the alive ones compete too
        for j in np.flatnonzero(np.isfinite(log_probs[b])):
            results[b].append(_hypothesis(tokens[b * k + j], None, log_probs[b, j], max_len, length_penalty, False))
    return [sorted(r, key=lambda h: -h.score)[:n_best] for r in results]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _extend(candidates: np.ndarray, V: int, k: int, eos_id: int) -> tuple[list, list]:
    """One source's step: candidates (k*V,) total log-probs -> (finished, alive).

    finished: (beam, log_prob) for EOS among the best k; alive: k (beam,
    token, log_prob), padded with dead (0, eos_id, -inf) entries when fewer
    than k finite candidates exist (a vocabulary smaller than the beam).
    """
    order = np.argsort(-candidates, kind="stable")[:2 * k]  # ties: lower beam, then lower token id first
    finished, alive = [], []
    for rank, c in enumerate(order):
        logp = float(candidates[c])
        if len(alive) == k or not math.isfinite(logp):
            break
        beam, token = divmod(int(c), V)
        if token != eos_id:
            alive.append((beam, token, logp))
        elif rank < k:
            finished.append((beam, logp))
    alive += [(0, eos_id, -math.inf)] * (k - len(alive))
    return finished, alive


def _is_done(found: list[Hypothesis], alive_log_probs: np.ndarray, n_best: int, penalty: float) -> bool:
    if not np.isfinite(alive_log_probs).any():
        return True
    if len(found) < n_best:
        return False
    nth_best = sorted((h.score for h in found), reverse=True)[n_best - 1]
    return nth_best >= float(np.max(alive_log_probs)) / penalty


def _hypothesis(prefix: np.ndarray, last: int | None, log_prob: float, length: int, alpha: float,
                finished: bool) -> Hypothesis:
    tokens = tuple(int(x) for x in prefix) + (() if last is None else (last,))
    return Hypothesis(tokens, float(log_prob), float(log_prob) / gnmt_length_penalty(length, alpha), finished)
