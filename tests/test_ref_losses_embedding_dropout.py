"""Cross-entropy and embedding against PyTorch in float64, dropout statistics, edge cases, bad input."""

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.functional import (
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
)


def dev(a):
    return backend.asarray(a)


def host(a):
    return backend.to_numpy(a)


def assert_close(got, want, tol=1e-10):
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    got = host(got)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ---------------------------------------------------------------- cross-entropy


def torch_cross_entropy(torch, logits, target, dloss, **kwargs):
    """Loss and dlogits from torch, class axis moved last by flattening as our contract says."""
    c = logits.shape[-1]
    t_logits = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, c), torch.tensor(target).reshape(-1), **kwargs)
    if kwargs.get("reduction") == "none":
        loss = loss.reshape(target.shape)
    loss.backward(torch.tensor(dloss))
    return loss, t_logits.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(backend_name, rng, reduction, label_smoothing):
    torch = pytest.importorskip("torch")
    logits = rng.normal(scale=3.0, size=(2, 5, 7))
    target = rng.integers(0, 7, size=(2, 5))
    target[rng.random(size=target.shape) < 0.3] = -100
    target[0, 0] = -100
    dloss = rng.normal(size=target.shape) if reduction == "none" else np.array(rng.normal())
    kwargs = {"reduction": reduction, "label_smoothing": label_smoothing}
    loss, ctx = cross_entropy_forward(dev(logits), dev(target), **kwargs)
    want, dlogits_want = torch_cross_entropy(torch, logits, target, dloss, **kwargs)
    assert_close(loss, want)
    assert_close(cross_entropy_backward(dev(dloss), ctx), dlogits_want)


def test_cross_entropy_custom_ignore_index_and_single_token(rng):
    torch = pytest.importorskip("torch")
    logits, target = rng.normal(size=(4, 3)), np.array([0, 2, 1, 2])
    loss, ctx = cross_entropy_forward(logits, target, ignore_index=2)
    want, grad_want = torch_cross_entropy(torch, logits, target, np.array(1.0), ignore_index=2)
    assert_close(loss, want)
    assert_close(cross_entropy_backward(1.0, ctx), grad_want)  # a Python float upstream gradient
    # logits (C,) with a 0-d target: one token
    loss, _ = cross_entropy_forward(logits[0], np.array(1), label_smoothing=0.2)
    want, _ = torch_cross_entropy(torch, logits[:1], np.array([1]), np.array(1.0), label_smoothing=0.2)
    assert_close(loss, want.reshape(()))


def test_cross_entropy_closed_form_with_smoothing():
    # uniform logits: -logp = log C for every class, so the loss is log C whatever s is
    loss, ctx = cross_entropy_forward(np.zeros((1, 4)), np.array([3]), label_smoothing=0.3)
    np.testing.assert_allclose(loss, np.log(4.0), rtol=1e-15)
    # d/dlogits = softmax - ((1 - s) onehot + s / C) = 1/4 - (0.7 * [0, 0, 0, 1] + 0.3 / 4)
    np.testing.assert_allclose(cross_entropy_backward(1.0, ctx), [[0.175, 0.175, 0.175, -0.525]], rtol=1e-14)


def test_cross_entropy_is_stable_for_logits_of_1e4(backend_name, rng):
    torch = pytest.importorskip("torch")
    logits = 1e4 * rng.normal(size=(3, 6))
    target = rng.integers(0, 6, size=3)
    loss, ctx = cross_entropy_forward(dev(logits), dev(target), label_smoothing=0.1)
    want, grad_want = torch_cross_entropy(torch, logits, target, np.array(1.0), label_smoothing=0.1)
    assert np.isfinite(host(loss)) and np.all(np.isfinite(host(cross_entropy_backward(1.0, ctx))))
    assert_close(loss, want)
    assert_close(cross_entropy_backward(1.0, ctx), grad_want)
    # closed form: log(1 + e^-1e4) == 0 in float64, and the wrong class costs exactly 1e4
    loss, _ = cross_entropy_forward(dev(np.array([[1e4, 0.0], [1e4, 0.0]])), dev(np.array([0, 1])), reduction="none")
    assert host(loss).tolist() == [0.0, 1e4]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_all_ignored_is_zero_with_zero_gradient(backend_name, reduction):
    # torch returns nan for the "mean" here (0/0); we return 0 on purpose so a padded batch cannot poison training
    target = np.full((2, 3), -100)
    loss, ctx = cross_entropy_forward(dev(np.ones((2, 3, 5))), dev(target), reduction=reduction)
    dloss = dev(np.ones((2, 3))) if reduction == "none" else 1.0
    assert np.all(host(loss) == 0.0)
    assert np.all(host(cross_entropy_backward(dloss, ctx)) == 0.0)


def test_cross_entropy_accepts_any_integer_target_dtype():
    loss8, _ = cross_entropy_forward(np.zeros((2, 3)), np.array([1, 2], dtype=np.uint8))
    loss64, _ = cross_entropy_forward(np.zeros((2, 3)), np.array([1, 2]))
    assert loss8 == loss64


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"target": np.array([0.0, 1.0])}, TypeError, "target must be an integer array"),
        ({"logits": np.zeros((2, 3), np.int64)}, TypeError, "logits must be a floating-point"),
        ({"logits": np.array(1.0)}, ValueError, "logits must have"),
        ({"target": np.array([0, 1, 2])}, ValueError, r"target must have shape \(2,\)"),
        ({"target": np.array([0, 3])}, ValueError, r"target must hold class ids in \[0, 3\) or ignore_index=-100, got values from 0 to 3"),
        ({"target": np.array([-1, 1])}, ValueError, "target must hold class ids"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing must be a probability"),
        ({"ignore_index": 1.0}, TypeError, "ignore_index must be an int"),
    ],
)
def test_cross_entropy_bad_input_is_named(kwargs, error, match):
    args = {"logits": np.zeros((2, 3)), "target": np.array([0, 1])} | kwargs
    with pytest.raises(error, match=match):
        cross_entropy_forward(**args)


def test_cross_entropy_out_of_range_is_caught_on_strict_device():
    with backend.use("strict"):
        with pytest.raises(ValueError, match="target must hold class ids"):
            cross_entropy_forward(dev(np.zeros((2, 3))), dev(np.array([0, 7])))


def test_cross_entropy_none_needs_dloss_of_target_shape():
    _, ctx = cross_entropy_forward(np.zeros((2, 3)), np.array([0, 1]), reduction="none")
    with pytest.raises(ValueError, match=r"dloss must be an array of shape \(2,\)"):
        cross_entropy_backward(1.0, ctx)


# ---------------------------------------------------------------- embedding


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch(backend_name, rng, padding_idx):
    torch = pytest.importorskip("torch")
    weight = rng.normal(size=(6, 4))
    ids = np.array([[2, 5, 2, 0], [1, 2, 5, 3]])
    dy = rng.normal(size=(2, 4, 4))
    y, ctx = embedding_forward(dev(ids), dev(weight), padding_idx=padding_idx)
    t_weight = torch.tensor(weight, requires_grad=True)
    want = torch.nn.functional.embedding(torch.tensor(ids), t_weight, padding_idx=padding_idx)
    want.backward(torch.tensor(dy))
    assert_close(y, want)
    assert_close(embedding_backward(dev(dy), ctx), t_weight.grad)


def test_embedding_repeated_ids_accumulate(backend_name, rng):
    weight = rng.normal(size=(3, 2))
    ids = np.array([1, 1, 1, 0])
    dy = rng.normal(size=(4, 2))
    y, ctx = embedding_forward(dev(ids), dev(weight))
    np.testing.assert_array_equal(host(y), weight[ids])
    dweight = host(embedding_backward(dev(dy), ctx))
    np.testing.assert_allclose(dweight, [dy[3], dy[0] + dy[1] + dy[2], [0.0, 0.0]], rtol=1e-15)


def test_embedding_of_a_single_id_and_of_no_ids():
    weight = np.arange(6.0).reshape(3, 2)
    y, _ = embedding_forward(np.array(2), weight)
    assert y.tolist() == [4.0, 5.0]
    y, ctx = embedding_forward(np.zeros((2, 0), np.int64), weight)
    assert y.shape == (2, 0, 2) and not embedding_backward(np.zeros((2, 0, 2)), ctx).any()


@pytest.mark.parametrize(
    "ids, weight, kwargs, error, match",
    [
        (np.array([0.0, 1.0]), np.ones((3, 2)), {}, TypeError, "ids must be an integer array"),
        (np.array([0, 3]), np.ones((3, 2)), {}, ValueError, r"ids must hold token ids in \[0, 3\), got values from 0 to 3"),
        (np.array([-1, 0]), np.ones((3, 2)), {}, ValueError, "got values from -1 to 0"),
        (np.array([0, 1]), np.ones(3), {}, ValueError, "weight must have 2 dimensions"),
        (np.array([0, 1]), np.ones((3, 2), np.int64), {}, TypeError, "weight must be a floating-point"),
        (np.array([0, 1]), np.ones((3, 2)), {"padding_idx": 3}, ValueError, r"padding_idx must be None or an int in \[-3, 3\)"),
    ],
)
def test_embedding_bad_input_is_named(ids, weight, kwargs, error, match):
    with pytest.raises(error, match=match):
        embedding_forward(ids, weight, **kwargs)


def test_embedding_out_of_range_is_caught_on_strict_device():
    with backend.use("strict"):
        with pytest.raises(ValueError, match="ids must hold token ids"):
            embedding_forward(dev(np.array([0, 9])), dev(np.ones((3, 2))))


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.99])
def test_dropout_statistics(backend_name, p):
    n = 100_000
    x = np.full(n, 3.0)
    y, ctx = dropout_forward(dev(x), p=p, generator=backend.Generator(11))
    y = host(y)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) <= 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 3.0 / (1 - p), rtol=1e-15)  # survivors scaled by 1/(1-p)
    # E[y] = x: y/3 has mean 1 and standard deviation sqrt(p / (1-p))
    assert abs(y.mean() / 3.0 - 1.0) <= 5 * np.sqrt(p / (1 - p) / n)
    dy = np.arange(n, dtype=np.float64)
    np.testing.assert_allclose(host(dropout_backward(dev(dy), ctx)), np.where(kept, dy / (1 - p), 0.0), rtol=1e-15)


@pytest.mark.parametrize("p, training", [(0.0, True), (0.5, False), (0.99, False)])
def test_dropout_identity_when_off(backend_name, p, training):
    x, dy = dev(np.arange(4.0)), dev(np.ones(4))
    y, ctx = dropout_forward(x, p=p, training=training)
    assert y is x and dropout_backward(dy, ctx) is dy


def test_dropout_same_seed_same_mask(backend_name):
    x = dev(np.ones(1000))
    a, _ = dropout_forward(x, p=0.3, generator=backend.Generator(5))
    b, _ = dropout_forward(x, p=0.3, generator=backend.Generator(5))
    c, _ = dropout_forward(x, p=0.3, generator=backend.Generator(6))
    assert np.array_equal(host(a), host(b)) and not np.array_equal(host(a), host(c))
    backend.manual_seed(5)
    d, _ = dropout_forward(x, p=0.3)  # the default generator
    assert np.array_equal(host(a), host(d))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"p": 1.0}, ValueError, r"p must be a probability in \[0, 1\)"),
        ({"p": -0.1}, ValueError, "p must be a probability"),
        ({"training": "yes"}, TypeError, "training must be a bool"),
        ({"generator": np.random.default_rng(0)}, TypeError, "generator must be a nptransformer.backend.Generator"),
        ({"x": np.ones(3, np.int64)}, TypeError, "x must be a floating-point"),
    ],
)
def test_dropout_bad_input_is_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        dropout_forward(**({"x": np.ones(3)} | kwargs))
