"""BatchNorm1d against torch.nn.BatchNorm1d; MixtureOfExperts against a per-token loop; their bad inputs.

The gradients themselves are checked by the registry (gradcheck: batch_norm,
BatchNorm1d.*, MixtureOfExperts.*, GPT.moe); here the forward semantics.
"""

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.apps.gradcheck import check_target
from nptransformer.models import GPT
from nptransformer.nn import BatchNorm1d, FeedForward, LayerNorm, MixtureOfExperts, load_balancing_loss
from nptransformer.registry import MODULE_CHECKS


@pytest.mark.parametrize("name", ["BatchNorm1d.train", "BatchNorm1d.eval", "MixtureOfExperts.top2",
                                  "MixtureOfExperts.top1_aux", "MixtureOfExperts.top2_renormalized_aux", "GPT.moe"])
def test_registered_checks_pass(name, backend_name):
    report = check_target("module", MODULE_CHECKS[name])
    report.raise_if_failed()
    assert report.max_rel < 1e-6, report.table()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_matches_torch_in_training_and_evaluation(momentum):
    torch = pytest.importorskip("torch", reason="PyTorch parity needs torch (pip install torch)")
    rng = np.random.default_rng(0)
    ours = BatchNorm1d(4, momentum=momentum, dtype="float64")
    theirs = torch.nn.BatchNorm1d(4, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(rng.normal(size=4)))
        theirs.bias.copy_(torch.tensor(rng.normal(size=4)))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for step in range(3):  # running statistics over several batches, (B, T, C) against torch's (B, C, T)
        x = rng.normal(loc=step, scale=1 + step, size=(3, 5, 4))
        dy = rng.normal(size=x.shape)
        ours.zero_grad()
        y = ours(x)
        dx = ours.backward(dy)
        xt = torch.tensor(x, requires_grad=True)
        theirs.zero_grad()
        yt = theirs(xt.transpose(1, 2)).transpose(1, 2)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), atol=1e-12)
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), atol=1e-12, err_msg=name)
    ours.eval(), theirs.eval()
    x = rng.normal(size=(1, 2, 4))  # a single row: only the running statistics can normalise it
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x).transpose(1, 2)).transpose(1, 2).detach().numpy(),
                               atol=1e-12)


def test_batch_norm_depends_on_batch_mates_layer_norm_does_not():
    rng = np.random.default_rng(1)
    x, others = rng.normal(size=(1, 4, 6)), rng.normal(size=(3, 4, 6))
    bn, ln = BatchNorm1d(6, dtype="float64"), LayerNorm(6, dtype="float64")
    a = np.concatenate([x, others]); b = np.concatenate([x, 3 * others + 1])
    assert np.max(np.abs(bn(a)[0] - bn(b)[0])) > 0.1
    np.testing.assert_array_equal(ln(a)[0], ln(b)[0])


def test_batch_norm_bad_inputs():
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm1d(3)(np.ones((4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2 rows"):
        BatchNorm1d(3)(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm1d(3, momentum=1.5)


def _per_token_reference(moe, x):
    """Each token on its own: softmax router, its top-k experts, weighted sum (renormalised or not)."""
    out = np.zeros_like(x)
    for n, token in enumerate(x):
        logits = moe.router.weight.data @ token
        p = np.exp(logits - logits.max()); p /= p.sum()
        top = np.argsort(-p)[:moe.top_k]
        gates = p[top] / (p[top].sum() if moe.renormalize else 1.0)
        for g, e in zip(gates, top):
            out[n] += g * moe.experts[int(e)](token[None])[0]
    return out


@pytest.mark.parametrize("top_k,renormalize", [(1, False), (2, False), (2, True), (4, True)])
def test_moe_matches_a_per_token_loop(top_k, renormalize):
    rng = np.random.default_rng(2)
    moe = MixtureOfExperts(5, 7, num_experts=4, top_k=top_k, renormalize=renormalize, dtype="float64")
    for p in moe.parameters():
        p.data = rng.normal(size=p.shape)
    x = rng.normal(size=(3, 4, 5))
    y = moe(x)
    np.testing.assert_allclose(y.reshape(-1, 5), _per_token_reference(moe, x.reshape(-1, 5)), atol=1e-12)
    assert sum(moe.tokens_per_expert) == 12 * top_k


def test_load_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    moe = MixtureOfExperts(3, 4, num_experts=4, top_k=1, dtype="float64")
    moe.router.weight.data = np.zeros((4, 3))  # uniform probabilities; argsort picks one expert for all
    moe(np.ones((8, 3)))
    assert moe.aux_loss == pytest.approx(1.0)
    moe.router.weight.data = np.array([[50.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    moe(np.ones((8, 3)))  # every token confidently on expert 0
    assert moe.aux_loss == pytest.approx(4.0, rel=1e-6)
    assert moe.tokens_per_expert == [8, 0, 0, 0]
    assert load_balancing_loss(moe) == pytest.approx(0.01 * moe.aux_loss)


def test_moe_parameters_grow_with_experts_active_ones_do_not():
    sizes = [MixtureOfExperts(8, 32, num_experts=e, top_k=2) for e in (2, 4, 8)]
    expert = FeedForward(8, 32).num_parameters()
    assert [m.num_parameters() for m in sizes] == [e * expert + 8 * e for e in (2, 4, 8)]
    assert [m.num_active_parameters() for m in sizes] == [2 * expert + 8 * e for e in (2, 4, 8)]


def test_moe_bad_inputs():
    with pytest.raises(ValueError, match="top_k"):
        MixtureOfExperts(4, 8, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="aux_loss_weight"):
        MixtureOfExperts(4, 8, num_experts=2, aux_loss_weight=float("nan"))
    with pytest.raises(ValueError, match="d_model"):
        MixtureOfExperts(4, 8, num_experts=2)(np.ones((2, 5), dtype=np.float32))


def test_gpt_with_moe_learns_and_balances():
    """A few Adam steps on a fixed batch lower the loss; the aux gradient keeps every expert in use."""
    from nptransformer.nn import CrossEntropyLoss
    from nptransformer.optim import AdamW

    backend.manual_seed(0)
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=16,
                feed_forward=lambda d: MixtureOfExperts(d, 32, num_experts=4, top_k=1, aux_loss_weight=0.1))
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 11, size=(4, 8))
    target = np.roll(idx, -1, axis=1)
    loss_fn, opt = CrossEntropyLoss(), AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        model.zero_grad()
        loss = loss_fn(model(idx), target)
        losses.append(float(loss) + load_balancing_loss(model))
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    assert min(model.blocks[0].feed_forward.tokens_per_expert) > 0
