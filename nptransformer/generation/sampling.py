"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Decoding decisions are made on the host, in float64 NumPy: a step's logits
are one small (B, V) array, and drawing from the backend's seeded
:class:`~nptransformer.backend.Generator` on the host gives the same tokens on
NumPy, CuPy and strict for one seed. The order is Hugging Face's: divide by
the temperature, keep the top k, keep the nucleus, then sample.

>>> import numpy as np
>>> logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
>>> np.isfinite(top_k_filter(logits, 2)).tolist()            # the 2 largest survive
[[True, True, False, False]]
>>> np.isfinite(top_p_filter(logits, 0.7)).tolist()          # 0.5 + 0.3 reaches 0.7
[[True, True, False, False]]
>>> next_tokens(logits, do_sample=False).tolist()
[0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from ..functional.softmax import softmax_forward


def check_sampling_args(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError for a temperature <= 0 when sampling, top_k < 1, or top_p outside (0, 1]."""
    if do_sample and (not _is_real(temperature) or not temperature > 0):
        raise ValueError(f"temperature must be a positive number when sampling (do_sample=True), got {temperature!r}; "
                         "use do_sample=False for greedy decoding")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_logits(logits: np.ndarray) -> None:
    """Raise FloatingPointError unless every row of host logits (B, V) is finite or -inf, with a token left."""
    bad = np.isnan(logits) | (logits == np.inf)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=-1)).tolist()
        raise FloatingPointError(f"the model's logits hold NaN or +inf in batch rows {rows} (NaN weights or "
                                 "an overflow upstream); no token can be chosen")
    empty = np.all(logits == -np.inf, axis=-1)
    if empty.any():
        raise FloatingPointError(f"every token's logit is -inf in batch rows {np.flatnonzero(empty).tolist()}: "
                                 "nothing is left to choose")


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits (B, V) with everything below each row's k-th largest value set to -inf.

    Ties with the k-th value are kept (so more than k may survive), as in
    Hugging Face; k >= V keeps everything.
    """
    V = logits.shape[-1]
    if k >= V:
        return logits
    kth = np.partition(logits, V - k, axis=-1)[..., V - k:V - k + 1]  # (B, 1): each row's k-th largest
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Logits (B, V) restricted to each row's nucleus: the smallest set of most probable tokens with mass >= p.

    A token survives when the tokens strictly ahead of it in the
    descending-probability order (ties in vocabulary order) hold less than
    ``p`` of the mass, so the most probable token always survives and
    p = 1 keeps everything.
    """
    if p >= 1.0:
        return logits
    probs, _ = softmax_forward(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")  # descending; ties keep vocabulary order
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_ahead = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_ahead < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def next_tokens(logits: np.ndarray, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: Any = None) -> np.ndarray:
    """One token per row from host logits (B, V) -> (B,) int64.

    Greedy (``do_sample=False``): the argmax (the first one on ties);
    temperature, top_k and top_p are then ignored. Sampling: logits /
    temperature, :func:`top_k_filter`, :func:`top_p_filter`, softmax, then
    one uniform draw u per row from ``generator`` (default
    ``backend.default_generator``) picks the first token whose cumulative
    probability exceeds u (inverse-CDF sampling: one number per token, so a
    seed fixes the tokens).

    Logits holding NaN or +inf, or a row that is all -inf (no token
    allowed), raise FloatingPointError naming the rows: argmax would
    otherwise return token 0 for them, forever. -inf entries are fine
    (tokens a mask or filter forbids).
    """
    check_sampling_args(do_sample, temperature, top_k, top_p)
    logits = np.asarray(logits, dtype=np.float64)
    check_logits(logits)
    if not do_sample:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scaled = logits / temperature
    if top_k is not None:
        scaled = top_k_filter(scaled, top_k)
    if top_p is not None:
        scaled = top_p_filter(scaled, top_p)
    cdf = np.cumsum(softmax_forward(scaled)[0], axis=-1)  # (B, V)
    g = generator or backend.default_generator
    u = g.uniform((logits.shape[0], 1), dtype="float64", like=logits)  # (B, 1) in [0, 1)
    return np.argmax(cdf > u * cdf[:, -1:], axis=-1).astype(np.int64)  # cdf[-1] is 1 up to rounding
