"""Activation checkpointing (nn/checkpoint.py, GPT.checkpoint_activations): same gradients, less memory."""

import tracemalloc

import numpy as np
import pytest

from nptransformer import GPT, backend, no_grad
from nptransformer.nn import CrossEntropyLoss, TransformerEncoderLayer
from nptransformer.nn.checkpoint import checkpoint_backward, checkpoint_forward


def _gpt_grads(checkpoint, dropout=0.1, dtype="float64", shape=(2, 12), **sizes):
    sizes = {"vocab_size": 30, "block_size": 12, "n_layer": 3, "n_head": 2, "d_model": 16, **sizes}
    model = GPT(**sizes, dropout=dropout, dtype=dtype, generator=backend.Generator(0),
                checkpoint_activations=checkpoint)
    idx = np.random.default_rng(1).integers(0, sizes["vocab_size"], shape)
    backend.manual_seed(7)  # the dropout masks
    criterion = CrossEntropyLoss()
    loss = criterion(model(idx), idx)
    model.backward(criterion.backward())
    after = backend.default_generator.state()
    return float(loss), {name: p.grad for name, p in model.named_parameters()}, after


@pytest.mark.parametrize("checkpoint", [True, [1], (0, 2)])
def test_gpt_gradients_are_identical_with_checkpointing(checkpoint):
    loss, grads, rng_after = _gpt_grads(False)
    loss_ck, grads_ck, rng_after_ck = _gpt_grads(checkpoint)
    assert loss_ck == loss
    assert grads_ck.keys() == grads.keys()
    for name in grads:
        np.testing.assert_array_equal(grads_ck[name], grads[name], err_msg=name)
    assert rng_after_ck == rng_after  # the recomputation left the random stream where one forward leaves it


def test_checkpointed_layer_matches_plain_backward_and_reuses_its_dropout_masks():
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.3, dtype="float64")
    x = np.random.default_rng(2).normal(size=(2, 5, 8))
    dy = np.random.default_rng(3).normal(size=(2, 5, 8))
    backend.manual_seed(11)
    y = layer(x, is_causal=True)
    dx = layer.backward(dy)
    plain = {n: p.grad for n, p in layer.named_parameters()}
    layer.zero_grad()
    backend.manual_seed(11)
    y_ck, ctx = checkpoint_forward(layer, x, is_causal=True)
    backend.default_generator.uniform((3,))  # draws between forward and backward must not matter
    dx_ck = checkpoint_backward(dy, ctx)
    np.testing.assert_array_equal(y_ck, y)
    np.testing.assert_array_equal(dx_ck, dx)
    for n, p in layer.named_parameters():
        np.testing.assert_array_equal(p.grad, plain[n], err_msg=n)


def test_checkpointing_lowers_peak_memory():
    def peak(checkpoint):
        tracemalloc.start()
        try:
            _gpt_grads(checkpoint, dropout=0.0, dtype="float32", shape=(8, 64), vocab_size=64, block_size=64,
                       n_layer=4, d_model=64)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    plain, checkpointed = peak(False), peak(True)
    assert checkpointed < 0.7 * plain, (plain, checkpointed)


def test_checkpoint_backward_needs_gradients():
    layer = TransformerEncoderLayer(4, 1, 8, dropout=0.0, dtype="float64")
    x = np.ones((1, 2, 4))
    _, ctx = checkpoint_forward(layer, x)
    assert not any(m._saved for m in layer.modules())  # the forward saved nothing
    with no_grad(), pytest.raises(RuntimeError, match="outside no_grad"):
        checkpoint_backward(np.ones((1, 2, 4)), ctx)
