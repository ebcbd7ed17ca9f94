"""Attention maps (need_weights) against a hand-written NumPy attention, and the heatmap plotter."""

import sys

import numpy as np
import pytest

from nptransformer import GPT, Seq2SeqTransformer, no_grad
from nptransformer.generation import KVCache
from nptransformer.viz import attention_maps, plot_attention


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def reference_gpt_first_layer_maps(model, idx):
    """softmax(q k^T / sqrt(D)) of block 0, causal, from the parameters alone: (B, H, T, T)."""
    sd = {k: np.asarray(v) for k, v in model.state_dict().items()}
    B, T = idx.shape
    H, C = model.n_head, model.d_model
    D = C // H
    x = sd["wte.weight"][idx] + sd["wpe.weight"][:T]
    h = layer_norm(x, sd["blocks.0.norm1.weight"], sd["blocks.0.norm1.bias"])
    qkv = h @ sd["blocks.0.self_attn.in_proj_weight"].T + sd["blocks.0.self_attn.in_proj_bias"]
    q, k = (qkv[..., i * C:(i + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(2))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_gpt_attention_maps_match_a_hand_written_attention():
    model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, dtype="float64")
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 6))
    model(idx)
    assert attention_maps(model) == {}  # nothing kept unless asked
    model(idx, need_weights=True)
    maps = attention_maps(model)
    assert list(maps) == ["blocks.0.self_attn", "blocks.1.self_attn"]
    np.testing.assert_allclose(maps["blocks.0.self_attn"], reference_gpt_first_layer_maps(model, idx), atol=1e-12)
    with no_grad():  # with a cache, each step's map is the last row(s) of the full one
        cache = KVCache(2, 8)
        model(idx[:, :5], cache=cache)
        model(idx[:, 5:], cache=cache, need_weights=True)
    for name, w in attention_maps(model).items():
        assert w.shape == (2, 2, 1, 6)
        np.testing.assert_allclose(w, maps[name][:, :, 5:], atol=1e-12)


def test_seq2seq_keeps_encoder_decoder_and_cross_attention_maps():
    model = Seq2SeqTransformer(9, 9, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=2,
                               dim_feedforward=16, dropout=0.0, pad_id=0, dtype="float64")
    src, tgt = np.array([[3, 4, 5, 0], [6, 7, 8, 3]]), np.array([[1, 4, 5], [1, 6, 7]])
    model(src, tgt, need_weights=True)
    maps = attention_maps(model)
    assert {n: w.shape for n, w in maps.items()} == {
        "transformer.encoder.layers.0.self_attn": (2, 2, 4, 4),
        "transformer.decoder.layers.0.self_attn": (2, 2, 3, 3),
        "transformer.decoder.layers.0.multihead_attn": (2, 2, 3, 4),
        "transformer.decoder.layers.1.self_attn": (2, 2, 3, 3),
        "transformer.decoder.layers.1.multihead_attn": (2, 2, 3, 4),
    }
    for w in maps.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-12)
    cross = maps["transformer.decoder.layers.1.multihead_attn"]
    assert np.all(cross[0, :, :, 3] == 0.0)  # the padded source position gets no attention
    decoder_self = maps["transformer.decoder.layers.0.self_attn"]
    assert np.all(decoder_self[np.broadcast_to(np.triu(np.ones((3, 3), dtype=bool), 1), decoder_self.shape)] == 0.0)


@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib", reason="plotting needs matplotlib (pip install nptransformer[viz])")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_plot_attention_draws_the_given_map(pyplot):
    w = np.array([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0]])
    ax = plot_attention(w, x_labels=["a", "b", "c"], y_labels=["x", "y"], title="map")
    np.testing.assert_array_equal(ax.images[0].get_array(), w)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_title() == "map" and ax.images[0].get_clim() == (0.0, 1.0)
    _, given = pyplot.subplots()
    assert plot_attention(w, ax=given, colorbar=False) is given
    heads = plot_attention(np.stack([w, w[::-1]]))
    assert len(heads) == 2
    np.testing.assert_array_equal(heads[1].images[0].get_array(), w[::-1])


def test_plot_attention_rejects_bad_input(pyplot):
    with pytest.raises(ValueError, match=r"pick one batch row"):
        plot_attention(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="x_labels must have 3 entries"):
        plot_attention(np.zeros((2, 3)), x_labels=["a"])
    _, ax = pyplot.subplots()
    with pytest.raises(ValueError, match="ax is for a single"):
        plot_attention(np.zeros((2, 2, 3)), ax=ax)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install nptransformer\[viz\]"):
        plot_attention(np.eye(2))
