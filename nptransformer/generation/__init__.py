"""Inference: KV cache, greedy / sampled generation for GPT, greedy and beam search for Seq2Seq.

- :mod:`.interface`: what a model offers to be decoded (encode, decode a step, a new cache).
- :class:`KVCache` (:mod:`nptransformer.nn.kv_cache`): keys and values of past positions, preallocated.
- :func:`generate` (:mod:`.decoder_only`): what ``GPT.generate`` runs.
- :func:`next_tokens`, :func:`top_k_filter`, :func:`top_p_filter` (:mod:`.sampling`).
- :func:`greedy_decode` (:mod:`.seq2seq`), :func:`beam_search` (:mod:`.beam`).
- :func:`stream_tokens` (:mod:`.streaming`): GPT tokens yielded one by one;
  :func:`beam_search_lm` (:mod:`.beam_lm`): beam search for GPT.
- :func:`benchmark_generation` (:mod:`.benchmark`): tokens/s with and without the cache.

docs/generation.md explains the design and the measured speed.
"""

from .beam import Hypothesis, beam_search, gnmt_length_penalty
from .beam_lm import beam_search_lm
from .benchmark import benchmark_generation
from ..nn.kv_cache import AttentionCache, KVCache, LayerCache
from .decoder_only import generate
from .interface import DecoderOnlyLM, EncoderDecoderLM
from .sampling import next_tokens, top_k_filter, top_p_filter
from .scheduled_sampling import ScheduledSampling, inverse_sigmoid_schedule, linear_schedule, mix_decoder_input
from .seq2seq import Seq2SeqStepper, greedy_decode
from .streaming import stream_tokens

__all__ = ["AttentionCache", "KVCache", "LayerCache", "generate", "next_tokens", "top_k_filter", "top_p_filter",
           "greedy_decode", "beam_search", "Hypothesis", "gnmt_length_penalty", "Seq2SeqStepper",
           "benchmark_generation", "DecoderOnlyLM", "EncoderDecoderLM", "stream_tokens", "beam_search_lm",
           "ScheduledSampling", "mix_decoder_input", "linear_schedule", "inverse_sigmoid_schedule"]
