"""Decoder-only generation one token at a time: a generator that yields each token as soon as it is chosen.

:func:`stream_tokens` is what streaming front ends (``nptransformer
generate``, the server) build on: the caller sees every token the moment
the model produces it and can stop early (a stop sequence, an end token, a
closed connection) by no longer iterating, which also ends the model's work.
It makes the same choices as :func:`~nptransformer.generation.generate` for
one prompt, step for step (a test checks greedy and seeded sampling).

>>> import numpy as np
>>> from nptransformer import GPT
>>> model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
>>> tokens = list(stream_tokens(model, [1, 2, 3], max_new_tokens=4))
>>> tokens == model.generate(np.array([[1, 2, 3]]), 4)[0, 3:].tolist()
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import _checks, backend
from .decoder_only import _Stepper
from .inference import check_token_id, inference
from .sampling import check_sampling_args, next_tokens


def stream_tokens(model: Any, prompt: Sequence[int] | Any, max_new_tokens: int, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, eos_id: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt`` (T,) ids, one per step.

    Greedy by default; ``do_sample`` samples with ``temperature``, ``top_k``
    and ``top_p`` from ``backend.Generator(seed)``. ``eos_id``: the stream
    ends after yielding it. The prompt plus the new tokens must fit
    ``model.max_positions`` (a ValueError says by how much they do not).
    The model runs in eval mode under ``no_grad`` while the generator is
    alive; its modes are restored when it finishes or is closed.
    """
    tokens = np.asarray(backend.to_numpy(prompt) if not isinstance(prompt, (list, tuple)) else prompt)
    if tokens.ndim != 1 or tokens.size < 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompt must be a non-empty 1-D sequence of token ids, got shape {tokens.shape} "
                         f"of {tokens.dtype}")
    _checks.check_int_at_least("max_new_tokens", max_new_tokens, 0)
    check_sampling_args(do_sample, temperature, top_k, top_p)
    if eos_id is not None:
        check_token_id("eos_id", eos_id, model.vocab_size)
    if tokens.size + max_new_tokens > model.max_positions:
        raise ValueError(f"prompt length {tokens.size} + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"context of {model.max_positions} positions")
    return _stream(model, tokens.astype(np.int64)[None, :], max_new_tokens, do_sample, temperature, top_k, top_p,
                   seed, eos_id, use_cache)


def _stream(model: Any, tokens: np.ndarray, max_new_tokens: int, do_sample: bool, temperature: float,
            top_k: int | None, top_p: float | None, seed: int | None, eos_id: int | None,
            use_cache: bool) -> Iterator[int]:
    generator = backend.Generator(seed) if seed is not None else None
    real = np.ones(tokens.shape, dtype=bool)
    with inference(model, backend.asarray(tokens)):
        step = _Stepper(model, use_cache, capacity=tokens.shape[1] + max_new_tokens)
        for _ in range(max_new_tokens):
            new = next_tokens(step.last_logits(tokens, real), do_sample, temperature, top_k, top_p, generator)
            tokens = np.concatenate([tokens, new[:, None]], axis=1)  # (1, t) -> (1, t + 1)
            real = np.concatenate([real, np.ones((1, 1), dtype=bool)], axis=1)
            yield int(new[0])
            if eos_id is not None and int(new[0]) == eos_id:
                return
