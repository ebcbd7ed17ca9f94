"""examples/bert_mlm.py: BERT's 15% / 80-10-10 masking, measured on a large sample, and a few real training steps."""

import io
import math
import pathlib

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.backend import Generator, to_numpy
from nptransformer.training import blas_threads

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example(load_example):
    return load_example("bert_mlm")


def test_masking_follows_bert_proportions(example):
    vocab_size = 24  # 4 special tokens + 20 characters: small, so a random draw often hits the original
    n_chars = vocab_size - example.N_SPECIAL
    rng = np.random.default_rng(0)
    ids = rng.integers(example.N_SPECIAL, vocab_size, (1000, 130))
    ids[:, 0], ids[:, -1] = example.CLS_ID, example.SEP_ID
    ids[::3, -6:-1] = example.PAD_ID  # padding and a literal [MASK] in the text: specials too
    ids[::5, 7] = example.MASK_ID
    special = ids < example.N_SPECIAL

    inputs, labels = example.mask_tokens(ids, Generator(1), vocab_size)

    assert inputs.shape == labels.shape == ids.shape
    selected = labels != -100
    assert not selected[special].any(), "special tokens must never be selected"
    assert (inputs[special] == ids[special]).all()
    np.testing.assert_array_equal(labels[selected], ids[selected])  # the label is the original token
    np.testing.assert_array_equal(inputs[~selected], ids[~selected])  # unselected inputs are untouched

    # About 128k candidate positions: the selected fraction's standard deviation is 0.001.
    assert abs(selected[~special].mean() - 0.15) < 0.005
    # About 19k selected: each fraction below has a standard deviation under 0.003.
    chosen_in, chosen_id = inputs[selected], ids[selected]
    to_mask = chosen_in == example.MASK_ID
    replaced = ~to_mask & (chosen_in != chosen_id)
    kept = chosen_in == chosen_id
    # A random replacement draws the original character 1 time in n_chars and then looks kept.
    assert abs(to_mask.mean() - 0.8) < 0.015
    assert abs(replaced.mean() - 0.1 * (1 - 1 / n_chars)) < 0.01
    assert abs(kept.mean() - (0.1 + 0.1 / n_chars)) < 0.01
    # Replacements are characters, never special tokens, and cover the whole character set.
    assert set(np.unique(chosen_in[replaced])) == set(range(example.N_SPECIAL, vocab_size))


def test_masking_is_reproducible_from_the_generator(example):
    ids = np.full((4, 50), 10)
    a = example.mask_tokens(ids, Generator(3), 30)
    b = example.mask_tokens(ids, Generator(3), 30)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_batches_are_framed_by_cls_and_sep(example):
    data = np.arange(example.N_SPECIAL, 40)
    (inputs,), labels = example.mlm_batch(data, 16, 8, 40, Generator(0))
    inputs, labels = to_numpy(inputs), to_numpy(labels)
    assert inputs.shape == labels.shape == (8, 18)
    assert (inputs[:, 0] == example.CLS_ID).all() and (inputs[:, -1] == example.SEP_ID).all()
    assert (labels[:, [0, -1]] == -100).all()
    # Labels hold the originals where selected, inputs elsewhere: together they are windows of the stream.
    original = np.where(labels != -100, labels, inputs)[:, 1:-1]
    assert (np.diff(original, axis=1) == 1).all()


def test_a_few_steps_lower_the_loss(example):
    text = (ROOT / "examples" / "data" / "tiny_shakespeare_sample.txt").read_text(encoding="utf-8")
    with backend.use("numpy"), blas_threads(1):  # tiny matrices: threads only contend
        _, trainer = example.train_bert_mlm(
            text, hidden=32, layers=1, heads=2, intermediate=64, seq_len=30, batch_size=16, steps=40, lr=3e-3,
            warmup=5, eval_every=40, log_every=5, out=io.StringIO())
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert len(losses) == 8
    # From about ln(V) (uniform guessing) towards the unigram entropy, within 40 steps.
    assert losses[-1] < losses[0] - 0.4, losses
    final = trainer.history[-1]
    assert final["step"] == 40 and all(math.isfinite(final[k]) for k in ("mlm_loss", "mlm_acc", "unigram_acc"))
    assert 0.0 <= final["mask_acc"] <= 1.0
