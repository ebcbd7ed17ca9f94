"""Beam search for decoder-only models (GPT): the most probable continuations of one prompt.

The search is the encoder-decoder's (:mod:`.beam`: the same candidate
ranking, GNMT length penalty, finishing rule and n-best lists), run on
``beam_width`` copies of the prompt instead of a decoded source. After each
step the KV cache's rows are reordered to follow their parent hypotheses.
``eos_id=None`` (a model without an end token) lets every hypothesis run to
``max_new_tokens``; the search then returns the best-scoring ones.

>>> import numpy as np
>>> from nptransformer import GPT
>>> model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
>>> best = beam_search_lm(model, [1, 2, 3], beam_width=1, max_new_tokens=4)[0]
>>> list(best.tokens) == model.generate(np.array([[1, 2, 3]]), 4)[0, 3:].tolist()   # width 1 is greedy
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _checks, backend
from .beam import Hypothesis, _extend, _hypothesis, _is_done, _log_softmax, check_beam_args, gnmt_length_penalty
from .decoder_only import _Stepper
from .inference import check_token_id, inference

_NO_EOS = -1  # stands for "no end token" inside the search; never a real id


def beam_search_lm(model: Any, prompt: Sequence[int] | Any, beam_width: int, max_new_tokens: int,
                   length_penalty: float = 0.6, eos_id: int | None = None, n_best: int = 1,
                   use_cache: bool = True) -> list[Hypothesis]:
    """Beam search continuing ``prompt`` (T,) ids -> its ``n_best`` best :class:`~nptransformer.generation.Hypothesis`.

    Each hypothesis holds the new tokens only (``eos_id`` last when
    ``finished``), its total log-probability given the prompt and its
    length-penalised score (GNMT alpha = ``length_penalty``; 0 ranks by
    log-probability), best score first. The prompt plus ``max_new_tokens``
    must fit the model's context.
    """
    tokens = np.asarray(backend.to_numpy(prompt) if not isinstance(prompt, (list, tuple)) else prompt)
    if tokens.ndim != 1 or tokens.size < 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompt must be a non-empty 1-D sequence of token ids, got shape {tokens.shape} "
                         f"of {tokens.dtype}")
    _checks.check_int_at_least("max_new_tokens", max_new_tokens, 1)
    check_beam_args(beam_width, n_best, length_penalty)
    if eos_id is not None:
        check_token_id("eos_id", eos_id, model.vocab_size)
    T, k = tokens.size, beam_width
    if T + max_new_tokens > model.max_positions:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} exceeds the model's context of "
                         f"{model.max_positions} positions")
    eos = _NO_EOS if eos_id is None else eos_id
    rows = np.tile(tokens.astype(np.int64), (k, 1))  # (k, T): one row per hypothesis
    log_probs = np.full(k, -np.inf)
    log_probs[0] = 0.0  # one live beam at the start: k copies of the prompt would fill the beam with duplicates
    results: list[Hypothesis] = []
    done = False
    with inference(model, backend.asarray(rows)):
        step = _Stepper(model, use_cache, capacity=T + max_new_tokens)
        for t in range(1, max_new_tokens + 1):  # t: new tokens once this step is taken
            logits = step.last_logits(rows, np.ones(rows.shape, dtype=bool))  # (k, V)
            V = logits.shape[-1]
            candidates = log_probs[:, None] + _log_softmax(logits)  # (k, V)
            found, alive = _extend(candidates.reshape(-1), V, k, eos)
            results += [_hypothesis(rows[beam, T:], eos, logp, t, length_penalty, True) for beam, logp in found]
            parents = np.array([beam for beam, _, _ in alive])
            new = np.array([max(token, 0) for _, token, _ in alive])  # dead rows (-inf) feed any valid id
            log_probs = np.array([logp for _, _, logp in alive])
            done = _is_done(results, log_probs, n_best, gnmt_length_penalty(t, length_penalty))
            rows = np.concatenate([rows[parents], new[:, None]], axis=1)  # (k, T + t - 1) -> (k, T + t)
            if done:
                break
            if step.cache is not None:
                step.cache.reorder(backend.asarray(parents))
    if not done:  # stopped by max_new_tokens: the alive ones compete too
        for j in np.flatnonzero(np.isfinite(log_probs)):
            results.append(_hypothesis(rows[j, T:], None, log_probs[j], rows.shape[1] - T, length_penalty, False))
    return sorted(results, key=lambda h: -h.score)[:n_best]
