"""Each reliability finding (issue "Reliability"), as a test that failed on the earlier code.

Non-finite values never pass silently, a backward refuses a gradient of
another shape, files are validated before anything is allocated from them,
and the command line turns user errors into one line.
"""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from nptransformer import GPT, Seq2SeqTransformer, backend, nn, optim
from nptransformer.generation import generate, greedy_decode, next_tokens
from nptransformer.io import load_checkpoint, read_checkpoint, save_checkpoint
from nptransformer.safetensors import read_header, save_file
from nptransformer.tokenizers import BertTokenizer, CharTokenizer


# -- a backward checks the gradient's shape ---------------------------------------------------------------
def test_linear_backward_refuses_a_gradient_of_another_shape():
    lin = nn.Linear(4, 3, dtype="float64")
    lin(np.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"Linear.backward: the gradient has shape \(5, 2, 3\).*\(2, 5, 3\)"):
        lin.backward(np.ones((5, 2, 3)))


def test_backward_in_the_wrong_order_after_two_forwards_is_named():
    lin = nn.Linear(4, 3, dtype="float64")
    lin(np.ones((2, 4)))
    lin(np.ones((7, 4)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*newest.*\(7, 3\)"):
        lin.backward(np.ones((2, 3)))  # the newest forward (7 rows) must be undone first


def test_loss_backward_takes_a_number_for_its_0d_output():
    crit = nn.CrossEntropyLoss()
    crit(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="CrossEntropyLoss.backward"):
        crit.backward(np.ones(2))
    crit(np.zeros((2, 3)), np.array([0, 1]))
    assert crit.backward(1.0).shape == (2, 3)


# -- optimizers and clipping: non-finite numbers ------------------------------------------------------------
def _param(values, grad):
    p = nn.Parameter(np.array(values, dtype=np.float64))
    p.grad = np.array(grad, dtype=np.float64)
    return p


@pytest.mark.parametrize("make", [lambda p: optim.SGD(p, lr=np.inf), lambda p: optim.Adam(p, lr=np.inf),
                                  lambda p: optim.Adam(p, eps=0.0)])
def test_infinite_rates_and_zero_eps_are_refused(make):
    with pytest.raises(ValueError, match="lr must be finite|eps must be > 0"):
        make([_param([1.0], [0.0])])


@pytest.mark.parametrize("opt", [optim.SGD, optim.Adam, optim.AdamW])
def test_a_nan_gradient_stops_the_step_before_any_weight_changes(opt):
    good, bad = _param([1.0, 2.0], [0.1, 0.1]), _param([3.0], [np.nan])
    optimizer = opt([good, bad], lr=0.1)
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[1\]"):
        optimizer.step()
    np.testing.assert_array_equal(good.data, [1.0, 2.0])
    np.testing.assert_array_equal(bad.data, [3.0])
    assert optim.grads_are_finite([good]) and not optim.grads_are_finite([good, bad])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_refuses_a_non_finite_gradient_or_leaves_every_gradient_alone(bad):
    finite, poisoned = _param([0.0, 0.0], [3.0, 4.0]), _param([0.0], [bad])
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        optim.clip_grad_norm([finite, poisoned], 1.0)
    total = optim.clip_grad_norm([finite, poisoned], 1.0, error_if_nonfinite=False)
    assert not np.isfinite(total)
    np.testing.assert_array_equal(finite.grad, [3.0, 4.0])  # not NaN, not zeroed


def test_float16_gradients_do_not_overflow_the_norm():
    p = nn.Parameter(np.zeros(4, dtype=np.float16))
    p.grad = np.full(4, 60000.0, dtype=np.float16)  # sum of squares 1.44e10: inf in float16
    total = optim.clip_grad_norm([p], 1.0)
    assert float(total) == pytest.approx(120000.0, rel=1e-3)
    np.testing.assert_allclose(p.grad.astype(np.float64), 0.5, rtol=2e-3)


# -- generation: non-finite logits ---------------------------------------------------------------------------
@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("logits", [[[0.0, np.nan, 1.0]], [[0.0, np.inf, 1.0]], [[-np.inf, -np.inf, -np.inf]]],
                         ids=["nan", "inf", "all-masked"])
def test_next_tokens_refuses_logits_that_choose_nothing(logits, do_sample):
    with pytest.raises(FloatingPointError, match="rows \\[0\\]"):
        next_tokens(np.array(logits), do_sample=do_sample)


def test_a_model_with_nan_weights_does_not_generate_token_zero_forever():
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
    model.ln_f.weight.data[0] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        model.generate(np.array([[1, 2]]), 3)
    seq2seq = Seq2SeqTransformer(7, 7, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=8, dropout=0.0)
    seq2seq.generator.weight.data[:] = np.nan
    with pytest.raises(FloatingPointError):
        greedy_decode(seq2seq, np.array([[3, 4]]), max_len=3, bos_id=1, eos_id=2)


class _Recorder(nn.Module):
    """A GPT behind the decoding interface that records the logits of every step."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt, self.steps = gpt, []
        self.vocab_size, self.max_positions = gpt.vocab_size, gpt.block_size

    def new_cache(self, capacity):
        return self.gpt.new_cache(capacity)

    def decode(self, ids, cache=None, attention_mask=None, position_ids=None):
        logits = self.gpt.decode(ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids)
        self.steps.append(np.array(logits[:, -1, :]))
        return logits


def test_cropped_generation_sees_exactly_the_last_block_size_tokens():
    gpt = GPT(vocab_size=13, block_size=6, n_layer=2, n_head=2, d_model=8, dtype="float64",
              generator=backend.Generator(3))
    recorder = _Recorder(gpt)
    prompt = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9]])  # longer than block_size
    out = generate(recorder, prompt, 5, crop=True)
    for step, logits in enumerate(recorder.steps):  # step t saw tokens out[:, :9 + t]: its last 6
        window = out[:, max(0, 9 + step - 6):9 + step]
        np.testing.assert_allclose(logits, gpt(window)[:, -1, :], rtol=1e-12, atol=1e-12, err_msg=f"step {step}")


# -- files ---------------------------------------------------------------------------------------------------------
def _safetensors_with_header(path, header):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
    return path


def test_null_metadata_means_no_metadata(tmp_path):
    path = _safetensors_with_header(tmp_path / "m.safetensors", {"__metadata__": None})
    assert read_header(path) == ({}, {})


@pytest.mark.parametrize("header, match", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}, "larger than any array"),
], ids=["deep", "dtype-list", "huge-shape"])
def test_malformed_safetensors_headers_are_named(tmp_path, header, match):
    path = _safetensors_with_header(tmp_path / "bad.safetensors", header)
    with pytest.raises(ValueError, match=match):
        read_header(path)


def _checkpoint(tmp_path):
    model = nn.Linear(2, 2, dtype="float64")
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model)
    return path, model


@pytest.mark.parametrize("damage, match", [
    (lambda meta, arrays: meta.pop("model"), "no 'model' entry"),
    (lambda meta, arrays: meta.pop("rng"), "no 'rng' entry"),
    (lambda meta, arrays: arrays.update({"model/weight": np.array([["a", "b"], ["c", "d"]])}), "not numbers"),
])
def test_damaged_checkpoints_are_named(tmp_path, damage, match):
    path, model = _checkpoint(tmp_path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    damage(meta, arrays)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, model)


def test_a_killed_save_leaves_no_orphan_after_the_next_save(tmp_path):
    path, model = _checkpoint(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".ck.npz.{int(dead.stdout)}.0123456789ab.tmp"  # what a save killed midway leaves
    orphan.write_bytes(b"partial")
    save_checkpoint(path, model)
    assert not orphan.exists() and read_checkpoint(path)[0]["step"] == 0


def test_vocab_files_in_latin1_or_with_a_byte_order_mark(tmp_path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "caf\u00e9", "a"]
    (tmp_path / "vocab.txt").write_bytes("\n".join(tokens).encode("latin-1"))
    with pytest.raises(ValueError, match="vocab.txt: not UTF-8"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_bytes("\ufeff".encode() + "\n".join(tokens).encode())
    assert BertTokenizer.from_pretrained(tmp_path).pad_token_id == 0


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
def test_corrupt_json_files_are_named(tmp_path, name):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")
    (tmp_path / name).write_text("{not json")
    with pytest.raises(ValueError, match=f"{name}: not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "chars.json").write_text("{oops")
    with pytest.raises(ValueError, match="chars.json: not valid JSON"):
        CharTokenizer.load(tmp_path / "chars.json")


def test_a_long_word_tokenizes_in_linear_time():
    # 2,000,000 characters took more than 30 s (a quadratic string build); now well under a second.
    from nptransformer.tokenizers import _split_punctuation

    word = "ab" * 500_000 + "," + "c" * 1_000_000
    pieces = _split_punctuation(word)
    assert [len(p) for p in pieces] == [1_000_000, 1, 1_000_000]


# -- bad arguments are named ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [(lambda: nn.Linear(-1, 3), "in_features"),
                                         (lambda: nn.Embedding(0, 3), "num_embeddings")])
def test_layer_sizes_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- the command line ------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nptransformer", *args], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_a_user_error_is_one_line_and_a_traceback_only_with_debug(tmp_path):
    plain = _cli("embed", "--model", str(tmp_path), "hello")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().startswith("nptransformer embed: error:") and len(plain.stderr.strip().splitlines()) == 1
    debug = _cli("--debug", "embed", "--model", str(tmp_path), "hello")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("args, match", [
    (["bench", "--steps", "0"], "--steps: expected an integer >= 1"),
    (["train-char", "--text", "README.md", "--threads", "-1"], "--threads: expected an integer >= 0"),
    (["train-char", "--text", "README.md", "--checkpoint", "no/dir/ck.npz"], "directory of 'no/dir/ck.npz'"),
    (["train-char", "--text", "no-such-file.txt"], "no such file"),
])
def test_numbers_and_paths_are_checked_before_any_work(args, match):
    result = _cli(*args)
    assert result.returncode == 2 and match in result.stderr and "Traceback" not in result.stderr


def test_train_char_on_a_text_without_a_newline_samples_from_its_first_character(tmp_path):
    text = tmp_path / "one_line.txt"
    text.write_text("abcdefghij" * 300)
    result = _cli("train-char", "--text", str(text), "--steps", "4", "--eval-every", "2", "--d-model", "8",
                  "--layers", "1", "--heads", "2", "--block-size", "8", "--batch-size", "2", "--sample-chars", "5",
                  "--plot", "")
    assert result.returncode == 0, result.stderr
    assert "--- sample" in result.stdout


def test_a_training_text_that_is_not_utf8_is_named(tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    result = _cli("train-char", "--text", str(text))
    assert result.returncode == 1 and "latin1.txt: not UTF-8 text" in result.stderr and "Traceback" not in result.stderr


def test_gpt_backward_refuses_logits_gradients_of_another_shape():
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
    model(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"GPT.backward: the gradient has shape \(3, 2, 11\)"):
        model.backward(np.ones((3, 2, 11), dtype=np.float32))


@pytest.mark.parametrize("call, match", [
    (lambda m: m(np.zeros((2, 0), dtype=np.int64)), r"idx must have shape \(B, T\) with T >= 1"),
    (lambda m: m(np.zeros((1, 3), dtype=np.int64), position_ids=np.array([[0, 1, 9]])), "position_ids must hold"),
])
def test_gpt_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))


def test_seq2seq_ids_out_of_range_name_the_argument():
    model = Seq2SeqTransformer(7, 5, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=8, dropout=0.0)
    with pytest.raises(ValueError, match="src must hold source token ids in \\[0, 7\\)"):
        model(np.array([[1, 7]]), np.array([[1, 2]]))
    with pytest.raises(ValueError, match="tgt must hold target token ids in \\[0, 5\\)"):
        model(np.array([[1, 2]]), np.array([[1, 5]]))


@pytest.mark.parametrize("load, name", [
    (lambda d: __import__("nptransformer").pretrained.load_bert(d), "config.json"),
    (lambda d: __import__("nptransformer").ByteLevelBPETokenizer.from_tokenizer_json(d / "tokenizer.json"),
     "tokenizer.json"),
])
def test_a_corrupt_model_or_tokenizer_json_is_named(tmp_path, load, name):
    (tmp_path / name).write_text('{"hidden_size": 4,')
    with pytest.raises(ValueError, match=f"{name}: not valid JSON"):
        load(tmp_path)
