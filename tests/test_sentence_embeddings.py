"""sentence_embeddings against each sentence embedded alone, and against transformers' padded batch.

length_groups is checked against a brute force over every way of cutting
the sorted rows into runs.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import BERT, backend, no_grad
from nptransformer.sentence_embeddings import length_groups, sentence_embeddings

CONFIG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              add_pooling_layer=False)


def _model(dtype="float64"):
    return BERT(**CONFIG, dtype=dtype, generator=backend.Generator(0)).eval()


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


@pytest.mark.parametrize("group_cost", [0, 4, 1000])
@pytest.mark.parametrize("normalize", [False, True])
def test_equals_each_sentence_embedded_alone(group_cost, normalize):
    rng = np.random.default_rng(0)
    model = _model()
    ids, types, mask = _batch(rng, [3, 9, 1, 12, 7, 7, 2, 12, 5], 12)
    got = sentence_embeddings(model, ids, mask, types, normalize=normalize, group_cost=group_cost)
    np.testing.assert_allclose(got, _alone(model, ids, types, mask, normalize), rtol=1e-12, atol=1e-12)


def test_left_padding_holes_and_empty_rows():
    rng = np.random.default_rng(1)
    model = _model()
    ids, types, mask = _batch(rng, [4, 8, 2, 6], 8, left=True)
    mask[1, 3] = 0  # a hole inside a row
    mask = np.concatenate([mask, np.zeros((1, 8), dtype=np.int64)])  # and a row with no real token
    ids, types = np.concatenate([ids, ids[:1]]), np.concatenate([types, types[:1]])
    got = sentence_embeddings(model, ids, mask, types, group_cost=0)
    np.testing.assert_allclose(got, _alone(model, ids, types, mask), rtol=1e-12, atol=1e-12)
    assert np.all(got[-1] == 0)


def test_float32_and_the_strict_backend(backend_name):
    rng = np.random.default_rng(2)
    with backend.use(backend_name):
        model = _model("float32")
        ids, types, mask = _batch(rng, [5, 11, 3, 11, 8], 11)
        want = _alone(model, ids, types, mask)
        got = sentence_embeddings(model, *(backend.asarray(a) for a in (ids, mask, types)), group_cost=0)
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


def _brute_force_cost(lengths, group_cost):
    s = sorted(lengths)
    best = None
    for k in range(len(s)):
        for cuts in itertools.combinations(range(1, len(s)), k):
            bounds = (0,) + cuts + (len(s),)
            cost = sum((hi - lo) * s[hi - 1] + group_cost for lo, hi in zip(bounds, bounds[1:]))
            best = cost if best is None else min(best, cost)
    return best


@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.sampled_from([0, 1, 5, 20, 100]))
def test_length_groups_is_an_optimal_cut(lengths, group_cost):
    lengths = np.array(lengths)
    groups = length_groups(lengths, group_cost)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))  # every row once
    cost = sum(len(g) * lengths[g].max() + group_cost for g in groups)
    assert cost == _brute_force_cost(lengths.tolist(), group_cost)
    for g in groups:
        assert list(lengths[g]) == sorted(lengths[g])


@pytest.mark.parametrize("bad, match", [
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 4))), "attention_mask"),
    (dict(input_ids=np.zeros(3, dtype=np.int64), attention_mask=np.ones(3)), "shape \\(B, T\\)"),
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.zeros((2, 3))), "no real token"),
    (dict(input_ids=np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 3)),
          token_type_ids=np.zeros((2, 2), dtype=np.int64)), "token_type_ids"),
])
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        sentence_embeddings(_model(), **bad)


@pytest.mark.parametrize("lengths, cost, match", [
    (np.array([1.5]), 1, "lengths"), (np.array([-1]), 1, "lengths"), (np.array([3]), -1, "group_cost")])
def test_length_groups_bad_input(lengths, cost, match):
    with pytest.raises(ValueError, match=match):
        length_groups(lengths, cost)
