"""The dropout kernel (kernels/dropout.py) beyond the registry sweep: the reference's mask bit for bit at real
sizes, split over threads or not, the generator left where the reference leaves it, and inf / NaN where dropped.
Also Generator.uniform_streams, which the kernel draws from."""

import numpy as np
import pytest

from nptransformer import backend, parallel
from nptransformer.functional import dropout_backward, dropout_forward
from nptransformer.kernels import KERNELS, choose

KERNEL = KERNELS["dropout.streams"]


def test_uniform_streams_give_the_whole_draw_and_leave_the_generator_where_it_would_be():
    serial, split = backend.Generator(3), backend.Generator(3)
    for g in (serial, split):
        g.integers(0, 5, (3,))  # a draw that may leave a 32-bit value held over
    want = np.random.Generator(np.random.PCG64())
    want.bit_generator.state = serial.state()
    whole = want.random(1001)
    serial.set_state(want.bit_generator.state)
    streams = split.uniform_streams([0, 400, 700], 1001)
    parts = np.concatenate([streams[0].random(400), streams[1].random(300), streams[2].random(301)])
    np.testing.assert_array_equal(parts, whole)
    assert split.state() == serial.state()
    np.testing.assert_array_equal(split.uniform((5,)), serial.uniform((5,)))  # and the next draws agree


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_mask_output_and_generator_state_are_the_reference_s(threads, p):
    x = np.random.default_rng(0).standard_normal((64, 48, 40)).astype(np.float32)[:, ::2]  # not contiguous
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    mine, theirs = backend.Generator(9), backend.Generator(9)
    kernel = KERNEL.configured(block_elements=1000, min_elements=1)
    with parallel.num_threads(threads):
        y, ctx = kernel.forward(x, p, generator=mine)
        dx = kernel.backward(dy, ctx)
    want, want_ctx = dropout_forward(x, p, generator=theirs)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(ctx[0], want_ctx[0])
    np.testing.assert_array_equal(dx, dropout_backward(dy, want_ctx))
    assert mine.state() == theirs.state()
    assert y.dtype == np.float32 and dx.dtype == np.float32


def test_dropped_entries_are_zero_whatever_they_held():
    x = np.full((1000,), np.inf)
    x[1::3] = np.nan
    x[2::3] = -np.inf
    y, ctx = KERNEL.configured(reference_below=0).forward(x, 0.5, generator=backend.Generator(2))
    keep = ctx[0]
    assert 0 < keep.sum() < x.size
    assert (y[~keep] == 0).all() and not np.signbit(y[~keep]).any()  # +0.0, as the reference's where gives
    np.testing.assert_array_equal(y[keep], x[keep] * 2.0)  # inf stays inf, NaN stays NaN
    dx = KERNEL.backward(x, ctx)
    assert (dx[~keep] == 0).all()


def test_dispatch_takes_large_arrays_in_training_only():
    x = np.zeros((64, 1024), dtype=np.float32)
    assert choose("dropout", x, 0.1) is KERNEL
    assert choose("dropout", x, 0.1, training=False) is not KERNEL
    assert choose("dropout", x, 0.0) is not KERNEL
    assert choose("dropout", np.zeros((4, 4)), 0.1) is not KERNEL  # small: the reference
