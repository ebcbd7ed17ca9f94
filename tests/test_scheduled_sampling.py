"""Scheduled sampling: the mixed decoder input holds gold tokens or the model's own greedy predictions,
in the proportion the schedule asks for, for the Transformer and the RNN seq2seq alike."""

from __future__ import annotations

import numpy as np
import pytest

from nptransformer import Seq2SeqTransformer
from nptransformer.backend import Generator
from nptransformer.data import ReversalTask
from nptransformer.generation import greedy_decode
from nptransformer.generation.scheduled_sampling import (ScheduledSampling, inverse_sigmoid_schedule, linear_schedule,
                                                          mix_decoder_input)
from nptransformer.grad_mode import no_grad
from nptransformer.models import RNNSeq2Seq

TASK = ReversalTask(3, 6)


def _models():
    yield Seq2SeqTransformer(13, 13, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                             dim_feedforward=16, dropout=0.0, pad_id=0, max_len=10, dtype="float64")
    yield RNNSeq2Seq(13, 13, embed_dim=6, hidden_size=8, attention="bahdanau", pad_id=0, dtype="float64")


@pytest.mark.parametrize("model", list(_models()), ids=["transformer", "rnn"])
def test_every_token_is_gold_or_the_models_prediction_from_the_mixed_prefix(model):
    (src, tgt_in), _ = TASK.batch(Generator(3), 16)
    mixed = mix_decoder_input(model, src, tgt_in, 0.5, Generator(1), pad_id=0)
    with no_grad():
        predicted = np.argmax(model.eval()(src, mixed), axis=-1)  # teacher forcing on the mixed input
    gold_kept = mixed[:, 1:] == tgt_in[:, 1:]
    model_fed = mixed[:, 1:] == predicted[:, :-1]
    assert np.all(gold_kept | model_fed)
    assert np.any(~gold_kept)  # with p = 0.5 some position took the model's (wrong, untrained) token
    assert np.all(mixed[:, 0] == 1) and np.all(mixed[tgt_in == 0] == 0)  # BOS and padding untouched


@pytest.mark.parametrize("model", list(_models()), ids=["transformer", "rnn"])
def test_probability_one_is_greedy_decoding_and_zero_is_teacher_forcing(model):
    (src, tgt_in), _ = TASK.batch(Generator(4), 8)
    assert mix_decoder_input(model, src, tgt_in, 0.0, Generator(0), pad_id=0) is tgt_in
    mixed = mix_decoder_input(model, src, tgt_in, 1.0, Generator(0))
    greedy = greedy_decode(model, src, max_len=tgt_in.shape[1] - 1, bos_id=1, eos_id=2)
    for row, g in zip(mixed, greedy):
        stop = list(g).index(2) + 1 if 2 in list(g) else len(g)  # greedy pads after EOS; the mix does not
        assert list(row[:stop]) == list(g[:stop])


def test_the_wrapper_follows_the_schedule():
    model = next(_models())
    sampler = ScheduledSampling(model, lambda g: TASK.batch(g, 64), linear_schedule(4, 0.5), pad_id=0)
    changed = []
    for _ in range(6):
        p = sampler.probability()
        (src, tgt_in), tgt_out = sampler(Generator(sampler.step))
        gold = np.concatenate([np.ones((64, 1), np.int64), tgt_out[:, :-1]], axis=1)
        real = (gold != 0)[:, 1:]
        changed.append((p, ((tgt_in != gold)[:, 1:] & real).sum() / real.sum()))
    assert changed[0] == (0.0, 0.0)
    assert [p for p, _ in changed] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert changed[-1][1] > 0.2  # about half drawn, most of them wrong for an untrained model


def test_schedules_and_bad_arguments():
    assert linear_schedule(10, 0.3)(5) == pytest.approx(0.15)
    s = inverse_sigmoid_schedule(5.0)
    assert 0.0 < s(0) < s(10) < s(30) <= 1.0
    with pytest.raises(ValueError, match="ramp_steps"):
        linear_schedule(0)
    with pytest.raises(ValueError, match="k must"):
        inverse_sigmoid_schedule(0.5)
    with pytest.raises(ValueError, match="p must"):
        mix_decoder_input(next(_models()), np.ones((1, 2), np.int64), np.ones((1, 2), np.int64), 1.5, Generator(0))
