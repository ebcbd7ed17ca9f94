"""Module mechanics: parameter registration, state_dict errors, to(), modes, no_grad and the context stack."""

import numpy as np
import pytest

from nptransformer import backend, nn, no_grad
from nptransformer.gradcheck import check_grad


class Twice(nn.Module):
    """y = f(f(x)) with one shared Linear: backward must pop the two contexts in reverse order."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(3, 3, dtype="float64")

    def forward(self, x):
        return self.f(self.f(x))

    def backward(self, d):
        return self.f.backward(self.f.backward(d))


def test_shared_layer_called_twice_backprops_exactly():
    m = Twice()
    x = np.random.default_rng(0).normal(size=(2, 3))
    report = check_grad(m, [x])
    assert report.passed and report.max_rel < 1e-7, report.table()
    # closed form: y = W(Wx + b) + b
    W, b = m.f.weight.data, m.f.bias.data
    np.testing.assert_allclose(m(x), (x @ W.T + b) @ W.T + b, rtol=1e-12)


def test_backward_without_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="without a saved forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), dtype=np.float32))


def test_no_grad_saves_nothing():
    lin = nn.Linear(2, 2)
    with no_grad():
        lin(np.ones((1, 2), dtype=np.float32))
    assert lin._saved == []


def test_named_parameters_follow_torch_names_and_list_tied_once():
    from nptransformer import GPT

    gpt = GPT(vocab_size=5, block_size=4, n_layer=1, n_head=1, d_model=4)
    names = [n for n, _ in gpt.named_parameters()]
    assert names[0] == "wte.weight" and "blocks.0.self_attn.in_proj_weight" in names
    assert "lm_head.weight" not in names  # tied to wte
    assert len(names) == len(set(names))


def test_load_state_dict_reports_missing_unexpected_and_shape_errors():
    m = nn.Linear(3, 2)
    sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
    with pytest.raises(KeyError, match="missing keys \\['bias'\\].*unexpected keys \\['extra'\\]"):
        m.load_state_dict({"weight": sd["weight"], "extra": sd["bias"]})
    with pytest.raises(ValueError, match="weight: checkpoint \\(2, 2\\), model \\(2, 3\\)"):
        m.load_state_dict({"weight": np.zeros((2, 2)), "bias": sd["bias"]})
    missing, unexpected = m.load_state_dict({"weight": np.ones((2, 3))}, strict=False)
    assert missing == ["bias"] and unexpected == []
    np.testing.assert_array_equal(m.weight.data, np.ones((2, 3), dtype=np.float32))
    assert m.weight.data.dtype == np.float32  # cast to the parameter's dtype


def test_to_casts_and_moves_every_parameter():
    m = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8)
    x = np.random.default_rng(0).normal(size=(1, 3, 4))
    y32 = m.eval()(x.astype(np.float32))
    m.to(dtype="float64", backend="strict")
    assert all(backend.backend_of(p.data) == "strict" and backend.dtype_name(p.dtype) == "float64"
               for p in m.parameters())
    with backend.use("strict"):
        y64 = backend.to_numpy(m(backend.asarray(x)))
    np.testing.assert_allclose(y64, y32, rtol=1e-4, atol=1e-5)


def test_train_eval_switches_dropout_everywhere():
    m = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.5)
    assert all(mod.training for mod in m.modules())
    m.eval()
    assert not any(mod.training for mod in m.modules())
    x = np.ones((1, 2, 4), dtype=np.float32)
    np.testing.assert_array_equal(m(x), m(x))  # deterministic in eval


def test_mixed_dtypes_are_refused():
    lin = nn.Linear(2, 2)  # float32
    with pytest.raises(TypeError, match="mixed dtypes|has dtype float64"):
        lin(np.ones((1, 2)))


def test_repr_lists_children():
    text = repr(nn.TransformerEncoderLayer(4, 2, dim_feedforward=8))
    assert "(self_attn): MultiheadAttention(embed_dim=4, num_heads=2" in text and "(linear1): Linear(" in text
