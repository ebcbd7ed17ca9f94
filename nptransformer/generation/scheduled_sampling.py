"""Scheduled sampling (Bengio et al., 2015): train the decoder on some of its own predictions.

Teacher forcing feeds the decoder the gold previous token at every
position; at test time it is fed its own, and an early mistake puts it in
states training never showed it (exposure bias). Scheduled sampling replaces
each gold input token, with probability p, by the token the model itself
predicts there given the inputs chosen so far, and raises p over training:

    for t = 1 .. T-1:   y~_t = gold_t                      with probability 1 - p
                        y~_t = argmax P(. | src, y~_<t)    with probability p
    loss = CE(model(src, y~), gold targets)               # gradient through the final pass only

:func:`mix_decoder_input` builds y~ for any encoder-decoder offering the
decoding interface (:mod:`nptransformer.generation.interface`: the
Transformer and the RNN seq2seq alike), one cached decoding step per
position, without gradient. :class:`ScheduledSampling` wraps a Trainer's
``batch_fn`` so that each training batch is mixed with the probability the
schedule gives at that step; the schedules are those of the paper, written
as the probability of feeding the model's token.

>>> [round(linear_schedule(100, 0.5)(s), 3) for s in (0, 50, 100, 200)]
[0.0, 0.25, 0.5, 0.5]
>>> round(inverse_sigmoid_schedule(10.0)(0), 3), round(inverse_sigmoid_schedule(10.0)(60), 3)
(0.091, 0.976)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .. import _checks, backend
from ..backend import Generator, to_numpy
from .inference import inference
from .seq2seq import Seq2SeqStepper


def linear_schedule(ramp_steps: int, max_prob: float = 0.25) -> Callable[[int], float]:
    """p(step) = max_prob * min(1, step / ramp_steps): from pure teacher forcing up to ``max_prob``."""
    _checks.check_positive_int("ramp_steps", ramp_steps)
    _checks.check_probability("max_prob", max_prob, allow_one=True)
    return lambda step: max_prob * min(1.0, step / ramp_steps)


def inverse_sigmoid_schedule(k: float, max_prob: float = 1.0) -> Callable[[int], float]:
    """p(step) = max_prob * (1 - k / (k + exp(step / k))), k >= 1: slow start, then a sigmoid rise."""
    if not isinstance(k, (int, float)) or k < 1:
        raise ValueError(f"k must be a number >= 1, got {k!r}")
    _checks.check_probability("max_prob", max_prob, allow_one=True)
    return lambda step: max_prob * (1.0 - k / (k + math.exp(min(step / k, 700.0))))


def mix_decoder_input(model: Any, src: Any, tgt_in: Any, p: float, generator: Generator,
                      pad_id: int | None = None) -> Any:
    """tgt_in (B, T) gold decoder inputs -> (B, T) with each position t >= 1 replaced, with probability ``p``,
    by the model's greedy prediction there given the mixed prefix before it.

    Position 0 (BOS) and ``pad_id`` positions stay as they are. The model runs
    in eval mode under ``no_grad`` (the choice of tokens is not differentiated,
    as in the paper). Returns an array of tgt_in's backend; tgt_in itself is
    returned when no position is drawn.
    """
    _checks.check_int("tgt_in", tgt_in)
    _checks.check_ndim("tgt_in", tgt_in, (2,))
    _checks.check_probability("p", p, allow_one=True)
    gold = to_numpy(tgt_in)
    B, T = gold.shape
    with backend.use("numpy"):
        draw = to_numpy(generator.uniform((B, T), dtype="float64")) < p
    draw[:, 0] = False
    if pad_id is not None:
        draw &= gold != pad_id
    if not draw.any():
        return tgt_in
    last = int(np.nonzero(draw.any(axis=0))[0].max())  # no prediction is needed past the last drawn column
    mixed = gold.copy()
    with inference(model, src):
        step = Seq2SeqStepper(model, src, use_cache=True, capacity=T)
        for t in range(1, last + 1):
            predicted = np.argmax(step.last_logits(mixed[:, :t]), axis=-1)  # the model's token for position t
            mixed[:, t] = np.where(draw[:, t], predicted, gold[:, t])
    with backend.use(backend.backend_of(tgt_in)):
        return backend.asarray(mixed, dtype=backend.dtype_name(tgt_in.dtype))


class ScheduledSampling:
    """A Trainer ``batch_fn`` that mixes the decoder input of ``batch_fn``'s batches with the model's predictions.

    ``batch_fn(generator) -> ((src, tgt_in), tgt_out)`` as for the
    encoder-decoder; ``schedule(step) -> p``, e.g. :func:`linear_schedule`.
    ``step`` counts the batches built; after resuming a Trainer from a
    checkpoint set ``sampler.step = trainer.step`` so the schedule continues.
    The coin flips use the Trainer's generator, so they are reproducible.

    >>> from nptransformer import Seq2SeqTransformer
    >>> from nptransformer.data import ReversalTask
    >>> task = ReversalTask(3, 5)
    >>> model = Seq2SeqTransformer(13, 13, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
    ...                            dim_feedforward=16, dropout=0.0, pad_id=0, max_len=8)
    >>> sampler = ScheduledSampling(model, lambda g: task.batch(g, 4), linear_schedule(10, 1.0), pad_id=0)
    >>> (src, tgt_in), tgt_out = sampler(Generator(0))   # step 0: p = 0, pure teacher forcing
    >>> sampler.step, bool((tgt_in[:, 1:] == tgt_out[:, :-1]).all())
    (1, True)
    >>> sampler.step = 10                                  # p = 1: every input token is the model's own
    >>> (src, tgt_in), tgt_out = sampler(Generator(0))
    >>> tgt_in.shape == tgt_out.shape, int(tgt_in[0, 0])
    (True, 1)
    """

    def __init__(self, model: Any, batch_fn: Callable[[Generator], tuple], schedule: Callable[[int], float], *,
                 pad_id: int | None = None):
        self.model, self.batch_fn, self.schedule, self.pad_id = model, batch_fn, schedule, pad_id
        self.step = 0

    def probability(self) -> float:
        """The probability of feeding the model's token at the current step."""
        return float(self.schedule(self.step))

    def __call__(self, generator: Generator) -> tuple:
        (src, tgt_in), tgt_out = self.batch_fn(generator)
        mixed = mix_decoder_input(self.model, src, tgt_in, self.probability(), generator, self.pad_id)
        self.step += 1
        return (src, mixed), tgt_out
