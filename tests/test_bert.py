"""BERT without Hugging Face: gradients against finite differences, parameter counts and FLOPs against
closed forms, padding against unpadded runs, and bad input. tests/test_pretrained.py compares with transformers."""

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.models import BERT
from nptransformer.apps.gradcheck import check_target
from nptransformer.registry import MODULE_CHECKS

SMALL = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
             max_position_embeddings=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("name", ["BERT.mlm", "BERT.pooler", "BERT.packed"])
def test_registered_checks_pass(name, backend_name):
    report = check_target("module", MODULE_CHECKS[name])
    report.raise_if_failed()
    assert report.max_rel < 1e-6, report.table()


@pytest.mark.parametrize("pooler,mlm", [(False, False), (True, False), (False, True), (True, True)])
def test_parameter_count_is_the_closed_form(pooler, mlm):
    V, H, L, I, P, N = 30, 8, 2, 12, 10, 2
    model = BERT(**SMALL, add_pooling_layer=pooler, add_mlm_head=mlm)
    layers = L * (4 * H * H + 4 * H + 2 * H * I + I + H + 4 * H)
    embeddings = (V + P + N) * H + 2 * H
    heads = pooler * (H * H + H) + mlm * (H * H + 3 * H + V)  # the MLM decoder is the word table
    assert model.num_parameters() == layers + embeddings + heads
    assert model.num_parameters(non_embedding=True) == layers + 2 * H + heads


def test_flops_per_token_is_six_n_plus_attention():
    V, H, L, I = 30, 8, 2, 12
    n_layers = L * (4 * H * H + 4 * H + 2 * H * I + I + H + 4 * H)
    encoder = BERT(**SMALL)
    assert encoder.flops_per_token() == 6 * n_layers + 12 * L * 10 * H
    mlm = BERT(**SMALL, add_mlm_head=True)
    assert mlm.flops_per_token(seq_len=4) == 6 * (n_layers + H * H + 3 * H + V + V * H) + 12 * L * 4 * H


def test_padding_leaves_real_tokens_as_without_it(rng):
    model = BERT(**SMALL, dtype="float64").eval()
    short = np.array([[2, 7, 9, 3]])
    types = np.array([[0, 0, 1, 1]])
    alone = model(short, types)
    padded_ids = np.array([[2, 7, 9, 3, 0, 0], [2, 5, 6, 8, 11, 3]])
    padded_types = np.array([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    batch = model(padded_ids, padded_types, mask)
    np.testing.assert_allclose(batch[0, :4], alone[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model(padded_ids, padded_types, mask.astype(bool)), batch)
    full = (padded_ids[1:], padded_types[1:])
    np.testing.assert_array_equal(model(*full, mask[1:]), model(*full))  # an all-ones mask is no mask


def test_hidden_state_is_post_ln_encoder_over_summed_embeddings():
    """Forward against a plain NumPy transcription of BERT's equations (1 layer, float64)."""
    from scipy.special import erf

    model = BERT(**{**SMALL, "num_hidden_layers": 1}, initializer_range=0.3, dtype="float64").eval()
    sd = {k: np.asarray(v) for k, v in model.state_dict().items()}
    ids, types = np.array([[1, 4, 9, 2]]), np.array([[0, 1, 1, 0]])

    def ln(x, w, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w + b

    e = "embeddings."
    x = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][:4]
    x = x + sd[e + "token_type_embeddings.weight"][types]
    x = ln(x, sd[e + "norm.weight"], sd[e + "norm.bias"])
    p = "encoder.layers.0."
    q, k, v = np.split(x @ sd[p + "self_attn.in_proj_weight"].T + sd[p + "self_attn.in_proj_bias"], 3, axis=-1)
    heads = lambda t: t.reshape(1, 4, 2, 4).transpose(0, 2, 1, 3)  # noqa: E731  (B, T, H*D) -> (B, H, T, D)
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 2.0
    a = np.exp(s - s.max(-1, keepdims=True))
    o = ((a / a.sum(-1, keepdims=True)) @ heads(v)).transpose(0, 2, 1, 3).reshape(1, 4, 8)
    o = o @ sd[p + "self_attn.out_proj.weight"].T + sd[p + "self_attn.out_proj.bias"]
    x = ln(x + o, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
    h = x @ sd[p + "linear1.weight"].T + sd[p + "linear1.bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    x = ln(x + h @ sd[p + "linear2.weight"].T + sd[p + "linear2.bias"], sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    np.testing.assert_allclose(model(ids, types), x, rtol=1e-10, atol=1e-12)
    pooled = np.tanh(x[:, 0] @ sd["pooler.dense.weight"].T + sd["pooler.dense.bias"])
    np.testing.assert_allclose(model.pooler(model(ids, types)), pooled, rtol=1e-10, atol=1e-12)


def test_mlm_head_is_tied_and_padding_row_is_frozen(rng):
    model = BERT(**SMALL, add_mlm_head=True, dtype="float64")
    names = [n for n, _ in model.named_parameters()]
    assert "embeddings.word_embeddings.weight" in names and not any("decoder" in n for n in names)
    assert not any("decoder" in k for k in model.state_dict())
    assert model.mlm_head.decoder.weight is model.embeddings.word_embeddings.weight
    ids = np.array([[2, 5, 0, 0]])  # 0 is pad_token_id: as in Hugging Face the lookup sends its row nothing
    hidden = model(ids)
    model.backward(rng.normal(size=hidden.shape))
    grad = model.embeddings.word_embeddings.weight.grad
    assert not grad[0].any() and grad[2].any() and not grad[1].any()
    model.zero_grad()
    logits = model.mlm_head(model(ids))
    assert logits.shape == (1, 4, 30)
    model.backward(model.mlm_head.backward(rng.normal(size=logits.shape)))
    assert model.embeddings.word_embeddings.weight.grad[1].any()  # never looked up: the decoder's part alone


def test_bert_dropout_places():
    model = BERT(**{**SMALL, "hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.3})
    layer = model.encoder.layers[0]
    assert (layer.dropout1.p, layer.dropout2.p, layer.self_attn.dropout, layer.dropout.p) == (0.2, 0.2, 0.3, 0.0)
    assert model.embeddings.dropout.p == 0.2


def test_runs_under_the_strict_backend():
    x = BERT(**SMALL, dtype="float64").eval()
    ids = np.array([[2, 7, 9, 3]])
    expected = x(ids, attention_mask=np.array([[1, 1, 1, 0]]))
    x.to(backend="strict")
    with backend.use("strict"):
        got = x(backend.asarray(ids), attention_mask=backend.asarray(np.array([[True, True, True, False]])))
    np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=1e-12)


@pytest.mark.parametrize("call,error,message", [
    (lambda m: m(np.zeros((1, 3))), TypeError, "input_ids must be an integer array"),
    (lambda m: m(np.zeros((3,), dtype=np.int64)), ValueError, r"input_ids must have shape \(B, T\)"),
    (lambda m: m(np.zeros((1, 11), dtype=np.int64)), ValueError, "exceeds max_position_embeddings 10"),
    (lambda m: m(np.zeros((1, 3), dtype=np.int64), np.zeros((1, 4), dtype=np.int64)), ValueError,
     "token_type_ids must have"),
    (lambda m: m(np.zeros((1, 3), dtype=np.int64), np.full((1, 3), 2)), ValueError,
     r"token_type_ids must hold segment ids in \[0, 2\)"),
    (lambda m: m(np.zeros((1, 3), dtype=np.int64), None, np.ones((1, 4))), ValueError, "attention_mask must have"),
    (lambda m: m(np.array([[1, 30]])), ValueError, r"input_ids must hold token ids in \[0, 30\)"),
    (lambda m: m.pooler(np.zeros((2, 3, 5), dtype=np.float32)), ValueError, r"hidden must have shape \(B, T, 8\)"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call(BERT(**SMALL))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        BERT(**SMALL, hidden_act="swish")
    with pytest.raises(ValueError, match=r"nhead \(3\) must divide d_model \(8\)"):
        BERT(**{**SMALL, "num_attention_heads": 3})
