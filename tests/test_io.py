"""Checkpoints: round trip, bit-identical resume, atomic saves, refusal of bad files and other architectures."""

import os

import numpy as np
import pytest

from nptransformer import GPT, Seq2SeqTransformer, backend, io
from nptransformer.backend import Generator
from nptransformer.data import char_batch
from nptransformer.io import load_checkpoint, read_checkpoint, save_checkpoint
from nptransformer.nn import CrossEntropyLoss
from nptransformer.optim import SGD, AdamW, WarmupCosine, clip_grad_norm, param_groups_for_weight_decay

V, T = 11, 8
DATA = np.random.default_rng(0).integers(0, V, size=500)


def _setup(seed=0, dropout=0.2):
    model = GPT(V, T, n_layer=2, n_head=2, d_model=16, dropout=dropout, generator=Generator(seed))
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=3e-3)
    sched = WarmupCosine(opt, warmup_steps=3, total_steps=20, min_lr=1e-4)
    return model, opt, sched, Generator(seed + 100)


def _train(model, opt, sched, gen, steps):
    crit = CrossEntropyLoss()
    for _ in range(steps):
        (x,), y = char_batch(DATA, T, 4, gen)
        crit(model(x), y)
        model.backward(crit.backward())
        clip_grad_norm(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad()


def _weights(model):
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def test_round_trip_restores_every_piece(tmp_path):
    path = tmp_path / "ckpt.npz"
    model, opt, sched, gen = _setup()
    _train(model, opt, sched, gen, 3)
    save_checkpoint(path, model, opt, step=3, schedule=sched, generator=gen, note="hi", table=np.arange(4.0))
    expect_default, expect_gen = backend.default_generator.uniform((5,)), gen.uniform((5,))

    model2, opt2, sched2, gen2 = _setup(seed=7)
    backend.manual_seed(99)
    info = load_checkpoint(path, model2, opt2, sched2, gen2)

    assert info["step"] == 3 and info["note"] == "hi"
    np.testing.assert_array_equal(info["table"], np.arange(4.0))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[k], v, err_msg=k)
        assert model2.state_dict()[k].dtype == v.dtype
    for p, p2 in zip(opt._all_params(), opt2._all_params()):
        s, s2 = opt.state[p], opt2.state[p2]
        assert s["step"] == s2["step"] == 3
        np.testing.assert_array_equal(s["exp_avg"], s2["exp_avg"])
        np.testing.assert_array_equal(s["exp_avg_sq"], s2["exp_avg_sq"])
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple again after JSON
    assert sched2.last_step == 3
    np.testing.assert_array_equal(backend.default_generator.uniform((5,)), expect_default)
    np.testing.assert_array_equal(gen2.uniform((5,)), expect_gen)


def test_resume_into_fresh_objects_is_bit_identical_with_dropout(tmp_path):
    path = tmp_path / "ckpt.npz"
    backend.manual_seed(0)
    straight = _setup()
    _train(*straight, 8)

    backend.manual_seed(0)
    first = _setup()
    _train(*first, 4)
    save_checkpoint(path, first[0], first[1], step=4, schedule=first[2], generator=first[3])
    backend.manual_seed(12345)  # whatever happens in between must not matter
    fresh = _setup(seed=3)  # other initial weights, fresh optimizer state, schedule and batch generator
    assert load_checkpoint(path, fresh[0], fresh[1], fresh[2], fresh[3])["step"] == 4
    _train(*fresh, 4)

    for k, v in _weights(straight[0]).items():
        np.testing.assert_array_equal(fresh[0].state_dict()[k], v, err_msg=k)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    model, opt, sched, gen = _setup()
    save_checkpoint(path, model, opt, step=1)
    before = path.read_bytes()
    _train(model, opt, sched, gen, 2)

    def crash(f, arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(io, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, step=3)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    monkeypatch.undo()
    fresh, opt2, _, _ = _setup(seed=5)
    assert load_checkpoint(path, fresh, opt2)["step"] == 1


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    model = _setup()[0]
    save_checkpoint(path, model)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated, corrupt or not a .npz"):
            load_checkpoint(path, model)


def test_corrupted_bytes_are_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    model = _setup()[0]
    save_checkpoint(path, model)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside some array's bytes: the zip CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path, model)


def test_foreign_files_are_refused(tmp_path):
    model = _setup()[0]
    npz, npy, txt = tmp_path / "other.npz", tmp_path / "one.npy", tmp_path / "notes.txt"
    np.savez(npz, weights=np.ones(3))
    np.save(npy, np.ones(3))
    txt.write_text("not an archive")
    with pytest.raises(ValueError, match="not an nptransformer checkpoint: it has no 'meta'"):
        load_checkpoint(npz, model)
    with pytest.raises(ValueError, match="holds one array"):
        load_checkpoint(npy, model)
    with pytest.raises(ValueError, match="truncated, corrupt or not a .npz"):
        load_checkpoint(txt, model)
    np.savez(npz, meta=np.asarray('{"format": "something-else"}'))
    with pytest.raises(ValueError, match="format tag 'something-else'"):
        load_checkpoint(npz, model)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz", model)


def test_newer_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    model = _setup()[0]
    monkeypatch.setattr(io, "VERSION", io.VERSION + 1)
    save_checkpoint(path, model)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="format version 2"):
        load_checkpoint(path, model)


def test_another_architecture_is_refused_before_anything_changes(tmp_path):
    path = tmp_path / "ckpt.npz"
    model, opt, _, _ = _setup()
    save_checkpoint(path, model, opt)

    deeper = GPT(V, T, n_layer=3, n_head=2, d_model=16)
    before = _weights(deeper)
    with pytest.raises(ValueError, match=r"another architecture: n_layer: checkpoint 2, model 3"):
        load_checkpoint(path, deeper)
    for k, v in before.items():
        np.testing.assert_array_equal(deeper.state_dict()[k], v)

    seq2seq = Seq2SeqTransformer(V, V, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=32)
    with pytest.raises(ValueError, match="holds a GPT .*cannot load it into a Seq2SeqTransformer"):
        load_checkpoint(path, seq2seq)

    same = _setup(seed=1)[0]
    with pytest.raises(ValueError, match="holds AdamW state; cannot load it into a SGD"):
        load_checkpoint(path, same, SGD(same.parameters(), lr=0.1))


def test_missing_pieces_are_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    model, opt, sched, gen = _setup()
    save_checkpoint(path, model)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, model, opt)
    with pytest.raises(ValueError, match="holds no schedule"):
        load_checkpoint(path, model, schedule=sched)
    with pytest.raises(ValueError, match="saved no generator state"):
        load_checkpoint(path, model, generator=gen)


def test_bad_arguments():
    model = _setup()[0]
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        save_checkpoint("unused.npz", model, step=-1)
    with pytest.raises(TypeError, match="extra 'thing' must be JSON-able or an array"):
        save_checkpoint("unused.npz", model, thing=object())
    with pytest.raises(TypeError, match="generator must be"):
        save_checkpoint("unused.npz", model, generator=np.random.default_rng(0))
    assert not os.path.exists("unused.npz")


def test_checkpoint_from_the_strict_backend_loads_into_numpy(tmp_path):
    pytest.importorskip("array_api_strict")
    path = tmp_path / "ckpt.npz"
    with backend.use("strict"):
        model = GPT(V, T, n_layer=1, n_head=2, d_model=8, generator=Generator(0))
        save_checkpoint(path, model)
        expected = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
    meta, arrays = read_checkpoint(path)
    assert meta["model"]["class"] == "GPT" and meta["model"]["config"]["n_layer"] == 1
    target = GPT(V, T, n_layer=1, n_head=2, d_model=8, generator=Generator(1))
    load_checkpoint(path, target)
    for k, v in expected.items():
        np.testing.assert_array_equal(target.state_dict()[k], v)
