"""Decoder-only generation (GPT): the prompt in, the prompt and its continuation out.

Each step feeds the model, takes the logits of the last position and picks
one token per row (:mod:`.sampling`). With the cache the prompt is fed once
(prefill) and then one token per step; without it, every step runs a full
forward over the whole sequence.

Batches of prompts of different lengths are LEFT-padded, with an
``attention_mask`` (B, T) that is 1 on real tokens and 0 on padding, as a
Hugging Face tokenizer with ``padding_side="left"`` returns them. Left,
because new tokens are appended after the last column. Padded keys are never
attended, and positions count from each row's first real token, so a padded
row produces the same tokens as the same prompt alone.

>>> import numpy as np
>>> from nptransformer import GPT
>>> model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
>>> out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=4)
>>> out.shape
(1, 7)
>>> bool((model.generate(np.array([[1, 2, 3]]), 4, use_cache=False) == out).all())
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import dtype_name, to_numpy
from .inference import inference
from .sampling import check_sampling_args, next_tokens


def generate(model: Any, idx: Any, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True, seed: int | None = None,
             attention_mask: Any = None, crop: bool = False) -> Any:
    """Continue each prompt of idx (B, T) by ``max_new_tokens`` tokens -> (B, T + max_new_tokens) ids.

    ``model``: a decoder-only model (:class:`~nptransformer.generation.DecoderOnlyLM`).

    - ``do_sample=False``: greedy (argmax); else sample with ``temperature``,
      ``top_k``, ``top_p`` (:func:`~nptransformer.generation.next_tokens`).
    - ``seed``: draws come from ``backend.Generator(seed)`` (default: the
      shared ``backend.default_generator``); one seed gives the same tokens
      with and without the cache.
    - ``attention_mask`` (B, T), int or bool: 0 on left padding, 1 on real tokens.
    - ``crop``: a prompt longer than ``model.block_size``, or one that would
      grow past it, is an error unless ``crop=True``. Then the model sees
      only the last max_positions tokens (a sliding window). Once the window
      slides, the cache cannot help: the learned positions of every kept
      token shift by one each step, so every cached key is stale, and each
      step runs a full forward over the window, as nanoGPT does.

    The model runs in eval mode (dropout off) under ``no_grad``; its modes
    are restored after. Returns an array of idx's backend and dtype.
    """
    _checks.check_int("idx", idx)
    if idx.ndim != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    _checks.check_int_at_least("max_new_tokens", max_new_tokens, 0)
    check_sampling_args(do_sample, temperature, top_k, top_p)
    B, T = idx.shape
    block = model.max_positions
    if not crop and T > block:
        raise ValueError(f"the prompt has {T} tokens but block_size is {block}; pass crop=True to keep the last "
                         f"{block}")
    if not crop and T + max_new_tokens > block:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} = {T + max_new_tokens} exceeds "
                         f"block_size {block}; pass crop=True to slide a window of the last {block} tokens")
    real = _prompt_mask(attention_mask, (B, T))
    tokens = to_numpy(idx).astype(np.int64)
    generator = backend.Generator(seed) if seed is not None else None
    with inference(model, idx):
        step = _Stepper(model, use_cache, capacity=min(block, T + max_new_tokens))
        for _ in range(max_new_tokens):
            new = next_tokens(step.last_logits(tokens, real), do_sample, temperature, top_k, top_p, generator)
            tokens = np.concatenate([tokens, new[:, None]], axis=1)  # (B, t) -> (B, t + 1)
            real = np.concatenate([real, np.ones((B, 1), dtype=bool)], axis=1)
        return backend.asarray(tokens, dtype=dtype_name(idx.dtype))


def _prompt_mask(attention_mask: Any, shape: tuple) -> np.ndarray:
    """attention_mask as host bool (B, T), True on real tokens; checked to be left padding."""
    if attention_mask is None:
        return np.ones(shape, dtype=bool)
    _checks.check_array("attention_mask", attention_mask)
    if tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask must have idx's shape {shape}, got {tuple(attention_mask.shape)}")
    mask = to_numpy(attention_mask)
    if mask.dtype != bool:
        _checks.check_int("attention_mask", attention_mask)
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only")
        mask = mask.astype(bool)
    if not mask[:, -1].all() or (np.diff(mask.astype(np.int8), axis=1) < 0).any():
        raise ValueError("attention_mask must describe LEFT padding (zeros, then ones, with a real token last in "
                         "every row): new tokens are appended after the last column (a tokenizer's "
                         "padding_side='left')")
    return mask


def _positions(real: np.ndarray) -> np.ndarray:
    """(B, T) positions counted from each row's first real token (padding gets 0; it is never attended)."""
    return np.maximum(np.cumsum(real, axis=1) - 1, 0)


class _Stepper:
    """Logits of the next token for the sequence so far, through the cache while it is usable."""

    def __init__(self, model: Any, use_cache: bool, capacity: int):
        self.model = model
        self.cache = model.new_cache(capacity) if use_cache else None

    def last_logits(self, tokens: np.ndarray, real: np.ndarray) -> np.ndarray:
        """tokens, real (B, t) host -> logits of position t (B, V) as float64 on the host."""
        window = max(0, tokens.shape[1] - self.model.max_positions)
        if window:
            self.cache = None  # the window slid: positions shifted, so cached keys are stale
        start = window if self.cache is None else self.cache.length
        feed, seen = tokens[:, start:], real[:, window:]  # new columns; every column the model attends to
        kwargs = {}
        if not seen.all():
            kwargs["attention_mask"] = backend.asarray(seen.astype(np.int64))
            kwargs["position_ids"] = backend.asarray(_positions(seen)[:, start - window:])
        logits = self.model.decode(backend.asarray(feed), cache=self.cache, **kwargs)  # (B, t_new, V)
        return to_numpy(logits[:, -1, :]).astype(np.float64)
