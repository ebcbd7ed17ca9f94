"""sentence_embeddings and BERT's packed forward against each sentence run alone, the padded batch's
gradients, and transformers' padded batch."""

import numpy as np
import pytest

from nptransformer import BERT, backend, no_grad
from nptransformer.nn.packing import Packing
from nptransformer.sentence_embeddings import sentence_embeddings

CONFIG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              add_pooling_layer=False)


def _model(dtype="float64", dropout=0.1):
    return BERT(**CONFIG, dtype=dtype, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                generator=backend.Generator(0)).eval()


def _alone(model, ids, types, mask, normalize=False):
    """Each row run by itself with only its real tokens, mean-pooled by hand: no padding anywhere."""
    rows = []
    for b in range(ids.shape[0]):
        real = np.flatnonzero(mask[b])
        if real.size == 0:
            rows.append(np.zeros(model.hidden_size))
            continue
        n = real[-1] + 1  # up to the last real token: positions as in the batch
        row = (backend.asarray(a[b:b + 1, :n]) for a in (ids, types, mask))  # on the current backend
        with no_grad():
            hidden = backend.to_numpy(model(*row))[0]
        pooled = hidden[mask[b, :n] != 0].mean(axis=0)
        rows.append(pooled / np.linalg.norm(pooled) if normalize else pooled)
    return np.stack(rows)


def _batch(rng, lengths, T, left=False):
    B = len(lengths)
    ids = rng.integers(1, CONFIG["vocab_size"], (B, T))
    types = rng.integers(0, 2, (B, T))
    mask = np.zeros((B, T), dtype=np.int64)
    for b, n in enumerate(lengths):
        if left:
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    return ids, types, mask


@pytest.mark.parametrize("normalize", [False, True])
def test_equals_each_sentence_embedded_alone(normalize):
    rng = np.random.default_rng(0)
    model = _model()
    ids, types, mask = _batch(rng, [3, 9, 1, 12, 7, 7, 2, 12, 5], 12)
    got = sentence_embeddings(model, ids, mask, types, normalize=normalize)
    np.testing.assert_allclose(got, _alone(model, ids, types, mask, normalize), rtol=1e-12, atol=1e-12)


def test_left_padding_holes_and_empty_rows():
    rng = np.random.default_rng(1)
    model = _model()
    ids, types, mask = _batch(rng, [4, 8, 2, 6], 8, left=True)
    mask[1, 3] = 0  # a hole inside a row
    mask = np.concatenate([mask, np.zeros((1, 8), dtype=np.int64)])  # and a row with no real token
    ids, types = np.concatenate([ids, ids[:1]]), np.concatenate([types, types[:1]])
    got = sentence_embeddings(model, ids, mask, types)
    np.testing.assert_allclose(got, _alone(model, ids, types, mask), rtol=1e-12, atol=1e-12)
    assert np.all(got[-1] == 0)


def test_float32_and_the_strict_backend(backend_name):
    rng = np.random.default_rng(2)
    with backend.use(backend_name):
        model = _model("float32")
        ids, types, mask = _batch(rng, [5, 11, 3, 11, 8], 11)
        want = _alone(model, ids, types, mask)
        got = sentence_embeddings(model, *(backend.asarray(a) for a in (ids, mask, types)))
        assert backend.backend_of(got) == backend_name and got.dtype == model.embeddings.norm.weight.data.dtype
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-5, atol=1e-5)


def test_matches_transformers_padded_batch():
    torch = pytest.importorskip("torch", reason="the transformers comparison needs torch")
    transformers = pytest.importorskip("transformers", reason="the transformers comparison needs transformers")
    from nptransformer.pretrained import bert_tensors

    rng = np.random.default_rng(3)
    model = _model()
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, hidden_act="gelu")
    twin = transformers.BertModel(cfg, add_pooling_layer=False).double().eval()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in bert_tensors(model).items()})
    ids, types, mask = _batch(rng, [3, 16, 9, 1, 14, 6], 16)
    with torch.inference_mode():
        hidden = twin(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                      attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    want = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(sentence_embeddings(model, ids, mask, types), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 4))), "attention_mask"),
    (dict(input_ids=np.zeros(3, dtype=np.int64), attention_mask=np.ones(3)), "shape \\(B, T\\)"),
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.zeros((2, 3), dtype=np.int64)), "no real token"),
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 3)),
          token_type_ids=np.zeros((2, 2), dtype=np.int64)), "token_type_ids"),
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 3), dtype=np.int64),
          token_type_ids=np.zeros((2, 2), dtype=np.int64)), "token_type_ids"),
])
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        sentence_embeddings(_model(), **bad)


def test_packed_forward_and_backward_equal_the_padded_batch_at_real_positions():
    rng = np.random.default_rng(4)
    padded, packed = _model(dropout=0.0).train(), _model(dropout=0.0).train()  # training mode, no randomness
    ids, types, mask = _batch(rng, [4, 9, 1, 9, 6], 9)
    dhidden = rng.normal(size=(5, 9, 16)) * mask[..., None]  # a loss that reads the real positions only
    want = padded(ids, types, mask)
    got = packed(ids, types, mask, packed=True)
    np.testing.assert_allclose(got, want * mask[..., None], rtol=1e-12, atol=1e-12)
    assert np.all(got[mask == 0] == 0)
    padded.backward(dhidden)
    packed.backward(dhidden)
    grads = dict(padded.named_parameters())
    for name, p in packed.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name].grad, rtol=1e-10, atol=1e-12, err_msg=name)


def test_packed_backward_against_finite_differences():
    rng = np.random.default_rng(5)
    model = _model().eval()
    ids, types, mask = _batch(rng, [3, 5, 2], 5)
    weights = rng.normal(size=(3, 5, 16))

    def loss():
        return float(np.sum(model(ids, types, mask, packed=True) * weights))

    loss()
    model.zero_grad()
    model.backward(weights)
    for name in ("encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.1.linear1.weight",
                 "embeddings.position_embeddings.weight"):
        p = dict(model.named_parameters())[name]
        index = tuple(int(rng.integers(0, n)) for n in p.shape[:1]) + (3,)
        old = float(p.data[index])
        p.data[index] = old + 1e-6
        up = loss()
        p.data[index] = old - 1e-6
        down = loss()
        p.data[index] = old
        np.testing.assert_allclose(p.grad[index], (up - down) / 2e-6, rtol=1e-6, atol=1e-8, err_msg=name)


def test_packing_moves_and_bad_input():
    packing = Packing(np.array([[0, 1, 1], [1, 0, 1]]))  # left padding and a hole
    x = np.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_array_equal(packing.pack(x)[0], x[np.array([[0, 1, 1], [1, 0, 1]]) == 1])
    np.testing.assert_array_equal(packing.unpack(packing.pack(x)), x * np.array([[0, 1, 1], [1, 0, 1]])[..., None])
    with pytest.raises(ValueError, match="no real token"):
        Packing(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        packing.pack(np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="shape"):
        packing.unpack(np.zeros((1, 3, 2)))
