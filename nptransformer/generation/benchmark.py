"""Generation speed: tokens per second with and without the KV cache."""

from __future__ import annotations

import time
from typing import Any

from .. import backend


def benchmark_generation(model: Any, batch_size: int = 1, prompt_len: int = 8, new_tokens: int = 64,
                         repeats: int = 3, seed: int = 0) -> dict:
    """Time greedy ``model.generate`` (a GPT) on random prompts (batch_size, prompt_len), with and without the cache.

    Each mode runs once to warm up, then ``repeats`` times; the best time
    counts (the least disturbed by other work on the machine). Returns a dict:
    ``batch_size``, ``prompt_len``, ``new_tokens``, ``seconds_cache``,
    ``seconds_no_cache``, ``tokens_per_s_cache``, ``tokens_per_s_no_cache``
    (generated tokens, all rows, per second) and ``speedup``.
    """
    g = backend.Generator(seed)
    with backend.use(backend.backend_of(model.parameters()[0].data)):
        prompt = g.integers(0, model.vocab_size, (batch_size, prompt_len))
    result = {"batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens}
    for name, use_cache in (("cache", True), ("no_cache", False)):
        best = float("inf")
        for i in range(repeats + 1):
            backend.synchronize()
            start = time.perf_counter()
            model.generate(prompt, new_tokens, use_cache=use_cache)
            backend.synchronize()
            if i:  # the first run warms up
                best = min(best, time.perf_counter() - start)
        result[f"seconds_{name}"] = best
        result[f"tokens_per_s_{name}"] = batch_size * new_tokens / best
    result["speedup"] = result["tokens_per_s_cache"] / result["tokens_per_s_no_cache"]
    return result
