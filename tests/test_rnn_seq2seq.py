"""Bahdanau and Luong attention against a torch autograd transcription of the papers' formulas, and the
RNN encoder-decoder against its own decoding interface (cache, greedy, beam, padding, attention maps)."""

from __future__ import annotations

import numpy as np
import pytest

from nptransformer import nn
from nptransformer.generation import beam_search, greedy_decode
from nptransformer.grad_mode import no_grad
from nptransformer.models import RNNSeq2Seq

torch = pytest.importorskip("torch", reason="torch autograd is the reference for the attention gradients")


def _torch_attention(module, kind, q, k, mask):
    """The formulas of Bahdanau et al. / Luong et al. written with torch ops, weights taken from ``module``."""
    P = {name: torch.tensor(p.data, requires_grad=True) for name, p in module.named_parameters()}
    if kind in ("bahdanau", "concat"):
        pre = (q @ P["score.query_proj.weight"].T)[:, :, None, :] + (k @ P["score.key_proj.weight"].T)[:, None, :, :]
        if kind == "bahdanau":
            pre = pre + P["score.key_proj.bias"]
        scores = (torch.tanh(pre) @ P["score.v.weight"].T)[..., 0]
    elif kind == "dot":
        scores = q @ k.transpose(1, 2)
    else:  # general: s^T W_a h
        scores = q @ (k @ P["score.key_proj.weight"].T).transpose(1, 2)
    scores = scores.masked_fill(torch.tensor(mask)[:, None, :], float("-inf"))
    w = torch.softmax(scores, dim=-1)
    context = w @ k
    if kind == "bahdanau":
        return context, w, P
    return torch.tanh(torch.cat([context, q], dim=-1) @ P["output_proj.weight"].T), w, P


@pytest.mark.parametrize("kind", ["bahdanau", "dot", "general", "concat"])
def test_attention_matches_the_formulas_with_torch_autograd(kind):
    rng = np.random.default_rng(0)
    Cq, Ck = 3, (3 if kind == "dot" else 5)
    if kind == "bahdanau":
        module = nn.BahdanauAttention(Cq, Ck, 4, dtype="float64")
    else:
        module = nn.LuongAttention(Cq, Ck, kind, out_size=2, attention_size=4, dtype="float64")
    q, k = rng.normal(size=(2, 3, Cq)), rng.normal(size=(2, 4, Ck))
    mask = np.array([[False, False, False, False], [False, True, False, True]])
    out, w = module(q, k, key_padding_mask=mask)
    cot = rng.normal(size=out.shape)
    dq, dk = module.backward(cot)
    qt, kt = torch.tensor(q, requires_grad=True), torch.tensor(k, requires_grad=True)
    t_out, t_w, P = _torch_attention(module, kind, qt, kt, mask)
    (t_out * torch.tensor(cot)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(w, t_w.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dq, qt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(dk, kt.grad.numpy(), atol=1e-10)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(p.grad, P[name].grad.numpy(), atol=1e-10, err_msg=name)
    assert np.all(w[1][:, [1, 3]] == 0.0) and np.all(dk[1, [1, 3]] == 0.0)  # padding: no weight, no gradient


def test_attention_rejects_bad_arguments():
    with pytest.raises(ValueError, match="score"):
        nn.LuongAttention(3, 3, score="cosine")
    with pytest.raises(ValueError, match="query_size == key_size"):
        nn.LuongAttention(3, 4, score="dot")
    attn = nn.BahdanauAttention(3, 4, 5)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(np.ones((1, 1, 3), np.float32), np.ones((1, 2, 4), np.float32), key_padding_mask=np.ones((1, 3), bool))
    with pytest.raises(ValueError, match="keys"):
        attn(np.ones((1, 1, 3), np.float32), np.ones((1, 2, 3), np.float32))


def _model(attention, cell="lstm", num_layers=1):
    return RNNSeq2Seq(9, 9, embed_dim=5, hidden_size=6, num_layers=num_layers, cell=cell, attention=attention,
                      pad_id=0, dtype="float64", max_len=12)


@pytest.mark.parametrize("attention,cell,layers", [(None, "lstm", 1), ("bahdanau", "gru", 2), ("luong", "lstm", 2)])
def test_cached_decoding_reproduces_the_teacher_forced_logits(attention, cell, layers):
    model = _model(attention, cell, layers).eval()
    src = np.array([[3, 4, 5, 6], [7, 8, 0, 0]])
    tgt = np.array([[1, 3, 4, 5, 2], [1, 6, 6, 2, 0]])
    with no_grad():
        full = model(src, tgt)
        memory = model.encode(src)
        cache = model.new_cache(8)
        steps = [model.decode(tgt[:, :2], memory, src, cache=cache)]
        steps += [model.decode(tgt[:, t:t + 1], memory, src, cache=cache) for t in range(2, 5)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-12)
    if attention is not None:
        maps = model.attention_maps()["attention"]
        assert maps.shape == (2, 1, 5, 4)
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-12)
        assert np.all(maps[1, 0, :, 2:] == 0.0)


@pytest.mark.parametrize("attention", [None, "bahdanau", "luong"])
def test_padding_the_source_changes_nothing(attention):
    model = _model(attention).eval()
    tgt = np.array([[1, 3, 4]])
    with no_grad():
        short = model(np.array([[3, 4, 5]]), tgt)
        padded = model(np.array([[3, 4, 5, 0, 0]]), tgt)
    np.testing.assert_allclose(short, padded, atol=1e-12)


def test_greedy_and_beam_search_drive_the_model_through_the_decoding_interface():
    model = _model("bahdanau")
    src = np.array([[3, 4, 5], [6, 7, 0]])
    greedy = greedy_decode(model, src, max_len=6, bos_id=1, eos_id=2)
    uncached = greedy_decode(model, src, max_len=6, bos_id=1, eos_id=2, use_cache=False)
    np.testing.assert_array_equal(greedy, uncached)
    beams = beam_search(model, src, beam_width=1, max_len=6, length_penalty=0.0, bos_id=1, eos_id=2)
    for row, hyps in zip(greedy, beams):  # width 1 is greedy decoding
        n = len(hyps[0].tokens)
        assert list(row[:n]) == list(hyps[0].tokens)
    wide = beam_search(model, src, beam_width=3, max_len=6, bos_id=1, eos_id=2, n_best=2)
    assert all(len(h) == 2 for h in wide)


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cell"):
        RNNSeq2Seq(5, 5, cell="rnn")
    with pytest.raises(ValueError, match="attention"):
        RNNSeq2Seq(5, 5, attention="dot")
    model = RNNSeq2Seq(5, 5, embed_dim=2, hidden_size=2, pad_id=0)
    with pytest.raises(ValueError, match="src"):
        model(np.array([[3, 9]]), np.array([[1]]))
    with pytest.raises(ValueError, match="pad_id"):
        model(np.array([[0, 0]]), np.array([[1]]))
