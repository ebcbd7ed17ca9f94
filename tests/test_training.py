"""The training loop: it learns, it resumes bit-identically, it stops on nan, it reports progress."""

import importlib.util
import io
import math
import re

import numpy as np
import pytest

from nptransformer import GPT, backend
from nptransformer.backend import Generator
from nptransformer.data import ReversalTask, char_batch
from nptransformer.nn import CrossEntropyLoss
from nptransformer.optim import AdamW, WarmupCosine
from nptransformer.training import Trainer, TrainingDiverged, format_duration


PATTERN = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6]), 50)  # after a 1 comes 4 or 5: needs attention to 2 back


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _trainer(seed=0, dropout=0.0, checkpoint=None, out=None, batch_fn=None, eval_fn=None, lr=1e-2):
    model = GPT(10, 16, n_layer=1, n_head=2, d_model=32, dropout=dropout, generator=Generator(seed))
    optimizer = AdamW(model.parameters(), lr=lr)
    schedule = WarmupCosine(optimizer, warmup_steps=2, total_steps=40)
    batch_fn = batch_fn or (lambda g: char_batch(PATTERN, 16, 8, g))
    return Trainer(model, optimizer, CrossEntropyLoss(), batch_fn, schedule=schedule, generator=Generator(seed + 1),
                   checkpoint=checkpoint, out=out or io.StringIO(), eval_fn=eval_fn)


def test_a_tiny_gpt_learns_a_repetitive_sequence_in_seconds():
    trainer = Trainer(GPT(10, 16, n_layer=1, n_head=2, d_model=32, generator=Generator(0)), None, CrossEntropyLoss(),
                      lambda g: char_batch(PATTERN, 16, 8, g), out=io.StringIO())
    trainer.optimizer = AdamW(trainer.model.parameters(), lr=1e-2)
    history = trainer.fit(60, log_every=5)
    assert history[0]["loss"] > 1.0  # starts near log(10) = 2.3
    assert history[-1]["loss"] < 0.1  # the pattern is deterministic given two tokens of context


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
def test_resumed_training_is_bit_identical_to_straight_training(tmp_path, threads):
    # At 3 threads every kernel splits (test settings): partial sums added in the order the threads
    # finished made a resumed run differ from a straight one by up to 8.5e-6.
    backend.manual_seed(0)
    straight = _trainer(dropout=0.3)
    straight.fit(10, log_every=1)

    backend.manual_seed(0)
    first = _trainer(dropout=0.3, checkpoint=tmp_path / "run.npz")
    first.fit(4, log_every=1, checkpoint_every=2)
    backend.manual_seed(777)
    out = io.StringIO()
    resumed = _trainer(seed=5, dropout=0.3, checkpoint=tmp_path / "run.npz", out=out)  # fresh objects
    resumed.fit(10, log_every=1, resume=True)

    assert "resumed from" in out.getvalue() and "at step 4" in out.getvalue()
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)


def test_resume_without_a_checkpoint_file_starts_from_zero(tmp_path):
    out = io.StringIO()
    trainer = _trainer(checkpoint=tmp_path / "none.npz", out=out)
    trainer.fit(2, resume=True)
    assert "no checkpoint at" in out.getvalue() and trainer.step == 2
    assert (tmp_path / "none.npz").exists()  # saved at the end


def _poisoning_batches(at_step):
    calls = []

    def batch_fn(g):
        calls.append(None)
        batch = char_batch(PATTERN, 16, 8, g)
        if len(calls) == at_step:
            trainer.model.wte.weight.data[...] = np.nan
        return batch

    trainer = _trainer(batch_fn=batch_fn)
    return trainer


def test_nan_loss_stops_the_run_naming_the_step_and_the_last_checkpoint(tmp_path):
    trainer = _poisoning_batches(at_step=5)
    trainer.checkpoint = str(tmp_path / "run.npz")
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit(20, checkpoint_every=2)
    message = str(e.value)
    assert "loss is nan at step 5" in message
    assert f"last good checkpoint: {tmp_path / 'run.npz'} (step 4)" in message
    assert e.value.step == 5 and e.value.checkpoint == (str(tmp_path / "run.npz"), 4)
    assert trainer.step == 4  # the bad step was not taken
    assert all(p.grad is None for p in trainer.model.parameters())


def test_inf_loss_without_checkpoints_says_so():
    trainer = _poisoning_batches(at_step=1)
    trainer.model.wte.weight.data[...] = np.inf
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 1: .*no checkpoint was saved"):
        trainer.fit(3)

    class InfiniteLoss(CrossEntropyLoss):
        def forward(self, logits, target):
            super().forward(logits, target)
            return np.float32(math.inf)

    trainer = _trainer()
    trainer.criterion = InfiniteLoss()
    with pytest.raises(TrainingDiverged, match="loss is inf at step 1"):
        trainer.fit(3)


def test_progress_is_one_line_per_interval_in_logs_and_rewritten_on_a_terminal():
    log = io.StringIO()
    _trainer(out=log).fit(6, log_every=2)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in log.getvalue()
    assert re.fullmatch(r"step 2/6 \| loss \d+\.\d{4} \| lr \S+ \| [\d,]+ tok/s \| elapsed \d+s \| ETA \d+s", lines[0])
    assert lines[-1].startswith("step 6/6") and lines[-1].endswith("ETA 0s")

    term = _Terminal()
    _trainer(out=term).fit(6, log_every=2)
    text = term.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1


def test_validation_runs_every_n_steps_in_eval_mode():
    seen = []

    def eval_fn(model):
        seen.append((model.training, model.blocks[0].training))
        return {"val_loss": 1.5, "acc": 0.25}

    out = io.StringIO()
    trainer = _trainer(eval_fn=eval_fn, out=out)
    trainer.fit(7, log_every=10, eval_every=3)
    assert seen == [(False, False)] * 3  # steps 3, 6 and the last
    assert trainer.model.training and trainer.model.blocks[0].training
    assert [h["step"] for h in trainer.history if "acc" in h] == [3, 6, 7]
    assert "step 3 | val_loss 1.5000 | acc 0.2500" in out.getvalue()


def test_bad_arguments(tmp_path):
    trainer = _trainer()
    with pytest.raises(ValueError, match="max_steps must be a positive integer, got 0"):
        trainer.fit(0)
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint path"):
        trainer.fit(5, checkpoint_every=2)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint path"):
        trainer.fit(5, resume=True)
    with pytest.raises(ValueError, match="eval_every must be a positive integer"):
        trainer.fit(5, eval_every=-1)
    with pytest.raises(ValueError, match="eval_every needs an eval_fn"):
        trainer.fit(5, eval_every=2)


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59.6, 75.2, 3725)] == ["0s", "1m00s", "1m15s", "1h02m05s"]


def test_reversal_batches_hold_reversed_digits_and_split_held_out_sequences():
    task = ReversalTask(min_len=2, max_len=6)
    digits, lengths = task.sample(Generator(0), 300)
    held, held_lengths = task.sample(Generator(1), 300, held_out=True)
    weighted = lambda d, n: sum((i + 1) * d[i] for i in range(n)) % 10  # noqa: E731
    assert all(weighted(d, n) != 0 for d, n in zip(digits, lengths))
    assert all(weighted(d, n) == 0 for d, n in zip(held, held_lengths))
    assert lengths.min() == 2 and lengths.max() == 6
    (src, tgt_in), tgt_out = task.encode(digits, lengths)
    for i in range(20):
        n = lengths[i]
        assert src[i, :n].tolist() == (digits[i, :n] + 3).tolist() and (src[i, n:] == task.PAD).all()
        assert tgt_in[i, 0] == task.BOS
        assert tgt_out[i, :n].tolist() == (digits[i, :n][::-1] + 3).tolist()
        assert tgt_out[i, n] == task.EOS and (tgt_out[i, n + 1:] == task.PAD).all()
        assert tgt_in[i, 1:n + 1].tolist() == tgt_out[i, :n].tolist()


def test_char_batch_targets_are_inputs_shifted_by_one():
    data = np.arange(100)
    (x,), y = char_batch(data, 10, 4, Generator(0))
    assert x.shape == y.shape == (4, 10)
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 1)
    with pytest.raises(ValueError, match="longer than block_size=200"):
        char_batch(data, 200, 4, Generator(0))


def test_char_split_and_validation_loss_match_a_direct_computation():
    from nptransformer.apps.train_char import split_text, validation_loss

    text = "to be or not to be, that is the question. " * 5
    tokenizer, train_ids, val_ids = split_text(text)
    assert len(val_ids) == len(text) - int(len(text) * 0.9)
    assert tokenizer.decode(np.concatenate([train_ids, val_ids])) == text
    model = GPT(tokenizer.vocab_size, 8, n_layer=1, n_head=2, d_model=16, dropout=0.5, generator=Generator(0))
    got = validation_loss(model, val_ids, block_size=8, batch_size=2)
    assert model.training  # restored

    n = (len(val_ids) - 1) // 8
    model.eval()
    logits = model(val_ids[: n * 8].reshape(n, 8)).astype(np.float64)  # (n, 8, V)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    targets = val_ids[1: n * 8 + 1].reshape(n, 8)
    want = -np.take_along_axis(log_probs, targets[..., None], axis=-1).mean()
    assert abs(got - want) < 1e-5


def test_train_char_command_trains_checkpoints_resumes_and_samples(tmp_path, capsys):
    from nptransformer.__main__ import main

    text = tmp_path / "text.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20, encoding="utf-8")
    args = ["train-char", "--text", str(text), "--d-model", "16", "--layers", "1", "--heads", "2",
            "--block-size", "16", "--batch-size", "4", "--eval-every", "3", "--sample-chars", "20",
            "--checkpoint", str(tmp_path / "char.npz"), "--plot", str(tmp_path / "loss.png")]
    assert main(args + ["--steps", "6"]) == 0
    first = capsys.readouterr().out
    assert "step 6 | val_loss" in first and "best validation loss" in first and "--- sample" in first
    assert main(args + ["--steps", "9", "--resume"]) == 0
    second = capsys.readouterr().out
    assert "resumed from" in second and "at step 6" in second and "step 9 | val_loss" in second
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _threads_seen(trainer_threads=None):
    """The pool's thread count inside fit's batches, and after fit."""
    from nptransformer import parallel

    seen = []

    def batch_fn(g):
        seen.append(parallel.get_num_threads())
        return char_batch(PATTERN, 16, 8, g)

    trainer = _trainer(batch_fn=batch_fn)
    trainer.threads = trainer_threads
    trainer.fit(3, log_every=3)
    return seen, parallel.get_num_threads()


def test_fit_splits_the_step_over_the_machines_cpus_by_default_and_restores_the_count(needs_the_pool):
    from nptransformer.training import default_threads

    seen, after = _threads_seen()
    assert seen == [default_threads()] * 3 and after == 1
    assert _threads_seen(1) == ([1, 1, 1], 1)  # threads=1: no pool


def test_fit_keeps_a_thread_count_the_caller_set(needs_the_pool):
    from nptransformer import num_threads

    with num_threads(3):
        assert _threads_seen() == ([3, 3, 3], 3)


def test_fit_gives_the_same_weights_run_after_run_on_the_pool(needs_the_pool):
    runs = []
    for _ in range(2):
        trainer = _trainer()
        trainer.threads = 2
        trainer.fit(4, log_every=4)
        runs.append(trainer.model.state_dict())
    for k, v in runs[0].items():
        np.testing.assert_array_equal(runs[1][k], v, err_msg=k)


def test_trainer_refuses_a_bad_thread_count_by_name():
    model = GPT(10, 16, n_layer=1, n_head=2, d_model=32)
    with pytest.raises((TypeError, ValueError), match="threads"):
        Trainer(model, AdamW(model.parameters()), CrossEntropyLoss(), lambda g: None, threads=0)
