"""Loss scaling and float16 mixed precision: the scaler's schedule, skipped steps, master gradients, checkpoints."""

import io

import numpy as np
import pytest

from nptransformer import GPT
from nptransformer.backend import Generator
from nptransformer.data import char_batch
from nptransformer.kernels.bfloat16 import round_to_bfloat16
from nptransformer.nn import CrossEntropyLoss, Linear, MixedPrecision
from nptransformer.optim import AdamW, GradScaler
from nptransformer.training import Trainer

PATTERN = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6]), 50)


def test_scaler_backs_off_on_overflow_and_grows_after_clean_steps():
    s = GradScaler(init_scale=1024.0, growth_interval=3, backoff_factor=0.25, min_scale=16.0)
    for found in (False, False, True, False, False, False, True, True, True):
        s.update(found_inf=found)
    # 1024 -> (2 clean, overflow) 256 -> (3 clean) 512 -> 128 -> 32 -> 16 (floored at min_scale)
    assert s.scale == 16.0
    assert s.skipped_steps == [3, 7, 8, 9]


@pytest.mark.parametrize("kwargs, match", [({"init_scale": 0.0}, "init_scale"),
                                           ({"growth_factor": 1.0}, "growth_factor"),
                                           ({"backoff_factor": 1.0}, "backoff_factor"),
                                           ({"growth_interval": 0}, "growth_interval")])
def test_scaler_refuses_bad_settings_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradScaler(**kwargs)


def test_scaler_step_skips_the_optimizer_on_a_non_finite_gradient():
    layer = Linear(3, 2)
    opt = AdamW(layer.parameters(), lr=0.1)
    s = GradScaler(init_scale=8.0)
    before = layer.weight.data.copy()
    layer.weight.grad = np.full((2, 3), np.inf, dtype=np.float32)
    assert s.step(opt) is False and s.scale == 4.0
    np.testing.assert_array_equal(layer.weight.data, before)
    layer.weight.grad = np.ones((2, 3), dtype=np.float32)
    assert s.step(opt) is True and not np.array_equal(layer.weight.data, before)


def test_master_gradients_match_a_float32_backward_and_scaling_rescues_tiny_ones():
    layer = Linear(8, 4, generator=Generator(0))
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    dy = np.full((5, 4), 1e-8, dtype=np.float32)  # below float16's smallest subnormal (6e-8)
    layer(x)
    layer.backward(dy)
    ref = layer.weight.grad.copy()
    layer.zero_grad()
    for scale, expect_zero in ((1.0, True), (2.0 ** 16, False)):
        mp = MixedPrecision(layer, "float16", GradScaler(init_scale=scale))
        mp(x)
        mp.backward(dy)
        g = layer.weight.grad
        assert g.dtype == np.float32
        if expect_zero:
            assert np.count_nonzero(g) == 0  # every entry lost to underflow
        else:
            np.testing.assert_allclose(g, ref, rtol=5e-3, atol=1e-11)
        layer.zero_grad()


def _trainer(scaler, checkpoint=None, out=None):
    model = GPT(10, 16, n_layer=1, n_head=2, d_model=32, generator=Generator(0))
    net = MixedPrecision(model, "float16", scaler)
    return Trainer(net, AdamW(net.parameters(), lr=1e-2), CrossEntropyLoss(), lambda g: char_batch(PATTERN, 16, 8, g),
                   generator=Generator(1), scaler=scaler, checkpoint=checkpoint, out=out or io.StringIO())


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_trainer_skips_overflowing_steps_logs_them_and_still_learns():
    out = io.StringIO()
    scaler = GradScaler(init_scale=2.0 ** 40, growth_interval=1000)  # far above float16's max (65504): overflows
    trainer = _trainer(scaler, out=out)
    w0 = trainer.model.model.wte.weight.data.copy()
    trainer.train_step(*trainer.batch_fn(trainer.generator))
    np.testing.assert_array_equal(trainer.model.model.wte.weight.data, w0)  # the skipped step changed nothing
    assert trainer.step == 1 and scaler.skipped_steps == [1] and scaler.scale == 2.0 ** 39
    assert "update skipped" in out.getvalue()
    history = trainer.fit(60, log_every=10)
    assert scaler.scale <= 2.0 ** 16 and history[-1]["loss"] < 0.5 * history[0]["loss"]


def test_scaler_state_is_saved_in_checkpoints_and_restored_on_resume(tmp_path):
    path = tmp_path / "run.npz"
    scaler = GradScaler(init_scale=2.0 ** 30, growth_interval=3)
    _trainer(scaler, checkpoint=path).fit(6, log_every=3, checkpoint_every=3)
    fresh = GradScaler()
    resumed = _trainer(fresh, checkpoint=path)
    resumed.fit(6, resume=True)
    assert fresh.state_dict() == scaler.state_dict() and fresh.skipped_steps


def test_resuming_a_scaled_run_from_a_checkpoint_without_scaler_state_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    model = GPT(10, 16, n_layer=1, n_head=2, d_model=32, generator=Generator(0))
    net = MixedPrecision(model, "float16")
    Trainer(net, AdamW(net.parameters(), lr=1e-2), CrossEntropyLoss(), lambda g: char_batch(PATTERN, 16, 8, g),
            checkpoint=path, out=io.StringIO()).fit(2)
    with pytest.raises(ValueError, match="loss-scaler"):
        _trainer(GradScaler(), checkpoint=path).fit(4, resume=True)


def test_train_char_gpt_runs_mixed_precision_and_refuses_an_unknown_precision():
    from nptransformer.apps.train_char import train_char_gpt

    text = "to be or not to be, that is the question\n" * 20
    model, _, trainer = train_char_gpt(text, d_model=16, n_layer=1, n_head=2, block_size=8, batch_size=4, steps=4,
                                       eval_every=2, log_every=2, precision="mixed", out=io.StringIO())
    assert isinstance(trainer.scaler, GradScaler) and isinstance(trainer.model, MixedPrecision)
    assert model.wte.weight.dtype == np.float32 and trainer.scaler.steps == 4
    with pytest.raises(ValueError, match="precision must be one of"):
        train_char_gpt(text, steps=2, precision="float8")
    _, _, trainer = train_char_gpt(text, d_model=16, n_layer=1, n_head=2, block_size=8, batch_size=4, steps=2,
                                   eval_every=2, log_every=2, precision="bfloat16", out=io.StringIO())
    assert trainer.model.dtype == "bfloat16" and trainer.scaler is None


def _bfloat16_bits_reference(x):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is the independent bfloat16 reference")
    with np.errstate(over="ignore"):
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def test_bfloat16_rounding_equals_ml_dtypes_bit_for_bit():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, size=2 ** 22, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7F7FFFFF,
                        0x7F7F8000, 0x7F7F7FFF, 0x00000001, 0x00008000, 0x00018000, 0x3F808000, 0x3F818000],
                       dtype=np.uint32)
    x = np.concatenate([bits, special]).view(np.float32)
    got, want = round_to_bfloat16(x), _bfloat16_bits_reference(x)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{int((~same).sum())} differ, first at bits {hex(int(x.view(np.uint32)[~same][0]))}"


def test_bfloat16_rounding_refuses_other_dtypes_by_name():
    with pytest.raises(TypeError, match="x must be a float32 array"):
        round_to_bfloat16(np.ones(3))


def test_bfloat16_mixed_precision_rounds_every_result_and_keeps_tiny_gradients():
    layer = Linear(8, 4, generator=Generator(0))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    mp = MixedPrecision(layer, "bfloat16")
    y = mp(x)
    xb, wb, bb = (_bfloat16_bits_reference(a).astype(np.float64) for a in (x, layer.weight.data, layer.bias.data))
    exact = xb @ wb.T + bb  # what bfloat16 hardware computes: bfloat16 operands, a wide accumulator
    np.testing.assert_allclose(y, exact, rtol=2 ** -8, atol=1e-30)  # one bfloat16 rounding of the result
    assert np.array_equal(y, _bfloat16_bits_reference(y))  # every value is a bfloat16 number
    dy = np.full((5, 4), 1e-8, dtype=np.float32)  # flushes to zero in float16, not in bfloat16
    mp.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 1e-8 * xb.sum(axis=0)[None, :].repeat(4, 0), rtol=2 ** -7)
    assert layer.weight.grad.dtype == np.float32
