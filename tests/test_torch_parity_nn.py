"""torch.nn parity in float64: outputs, input gradients and every parameter gradient.

Weights travel through state_dict in both directions; hypothesis picks the
configs (sizes, heads, masks, post-/pre-LN, relu/gelu).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import nn

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (pip install torch)")

TOL = 1e-9


def rel_err(ours, ref):
    """max|ours - ref| / max|ref|, with max|ref| floored at 1e-6: gradients that vanish (LayerNorm at
    d_model=2 gives ~1e-35) are compared absolutely instead of by their rounding noise."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), 1e-6))


def load_from_torch(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def leaf(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def assert_param_grads_match(ours, theirs):
    torch_grads = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
    our_names = [n for n, _ in ours.named_parameters()]
    assert sorted(our_names) == sorted(torch_grads), "parameter names differ from torch's"
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, torch_grads[name]) < TOL, name


def padding_mask(rng, B, S):
    """Random tail padding, never a fully padded row (torch gives nan there, we give zeros)."""
    lengths = rng.integers(1, S + 1, size=B)
    return np.arange(S)[None, :] >= lengths[:, None]


@st.composite
def attention_configs(draw):
    H = draw(st.integers(1, 3))
    return dict(E=H * draw(st.integers(1, 3)), H=H, B=draw(st.integers(1, 3)), L=draw(st.integers(1, 5)),
                S=draw(st.integers(1, 5)), seed=draw(st.integers(0, 2**31)), bias=draw(st.booleans()))


@given(cfg=attention_configs(), kind=st.sampled_from(["self", "kv", "separate"]), average=st.booleans(),
       use_masks=st.booleans())
def test_multihead_attention_matches_torch(cfg, kind, average, use_masks):
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])  # torch's initial weights too, so an example replays exactly
    E, H, B, L = cfg["E"], cfg["H"], cfg["B"], cfg["L"]
    S = L if kind == "self" else cfg["S"]
    ref = torch.nn.MultiheadAttention(E, H, bias=cfg["bias"], batch_first=True, dtype=torch.float64)
    ours = nn.MultiheadAttention(E, H, bias=cfg["bias"], dtype="float64")
    load_from_torch(ours, ref)
    q = rng.normal(size=(B, L, E))
    k = q if kind == "self" else rng.normal(size=(B, S, E))
    v = k if kind in ("self", "kv") else rng.normal(size=(B, S, E))
    masks = {}
    if use_masks:
        masks["key_padding_mask"] = padding_mask(rng, B, S)
        attn = rng.random((L, S)) < 0.3
        attn[:, 0] = False  # keep one key visible to every query
        masks["attn_mask"] = attn
    tq, tk, tv = leaf(q), (leaf(k) if kind != "self" else None), (leaf(v) if kind == "separate" else None)
    tk = tq if kind == "self" else tk
    tv = tk if kind in ("self", "kv") else tv
    tmasks = {n: torch.tensor(m) for n, m in masks.items()}
    y_ref, w_ref = ref(tq, tk, tv, need_weights=True, average_attn_weights=average, **tmasks)
    dy = rng.normal(size=tuple(y_ref.shape))
    y_ref.backward(torch.tensor(dy))
    # torch's signature: three projections, one gradient per argument; an array passed twice gets the sum.
    y, w = ours(q, k, v, need_weights=True, average_attn_weights=average, **masks)
    assert rel_err(y, y_ref.detach().numpy()) < TOL
    assert rel_err(w, w_ref.detach().numpy()) < TOL
    dq, dk, dv = ours.backward(dy)
    grads = (dq + dk + dv,) if kind == "self" else (dq, dk + dv) if kind == "kv" else (dq, dk, dv)
    for got, leaf_tensor in zip(grads, (tq, tk, tv)):
        assert rel_err(got, leaf_tensor.grad.numpy()) < TOL
    assert_param_grads_match(ours, ref)
    if kind == "separate":
        return
    # The explicit self- and cross-attention paths (fused projections) give the same numbers.
    ours.zero_grad()
    if kind == "self":
        y = ours.self_attention(q, need_weights=True, **masks)
        grads = (ours.backward(dy),)
    else:
        y = ours.cross_attention(q, k, need_weights=True, **masks)
        grads = ours.backward(dy)
    assert rel_err(y, y_ref.detach().numpy()) < TOL
    per_head = ours.attn_weights.mean(axis=1) if average else ours.attn_weights
    assert rel_err(per_head, w_ref.detach().numpy()) < TOL
    for got, leaf_tensor in zip(grads, (tq, tk)):
        assert rel_err(got, leaf_tensor.grad.numpy()) < TOL
    assert_param_grads_match(ours, ref)


@st.composite
def layer_configs(draw):
    H = draw(st.integers(1, 2))
    # d_model >= 3: a LayerNorm over 2 features outputs +-1 whatever its input, so the gradient through
    # it is rounding noise and a relative comparison measures nothing (the op tests draw C >= 3 too).
    return dict(E=H * draw(st.integers(3 if H == 1 else 2, 4)), H=H, F=draw(st.integers(2, 8)), B=draw(st.integers(1, 3)),
                T=draw(st.integers(1, 5)), S=draw(st.integers(1, 5)), norm_first=draw(st.booleans()),
                activation=draw(st.sampled_from(["relu", "gelu"])), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


def causal(T):
    return np.triu(np.ones((T, T), dtype=bool), k=1)


@given(cfg=layer_configs())
def test_encoder_layer_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])  # torch's initial weights too, so an example replays exactly
    kw = dict(dim_feedforward=cfg["F"], dropout=0.0, activation=cfg["activation"], norm_first=cfg["norm_first"],
              bias=cfg["bias"])
    ref = torch.nn.TransformerEncoderLayer(cfg["E"], cfg["H"], batch_first=True, dtype=torch.float64, **kw)
    ours = nn.TransformerEncoderLayer(cfg["E"], cfg["H"], dtype="float64", **kw)
    load_from_torch(ours, ref)
    x = rng.normal(size=(cfg["B"], cfg["T"], cfg["E"]))
    pad = padding_mask(rng, cfg["B"], cfg["T"])
    tx = leaf(x)
    y_ref = ref(tx, src_key_padding_mask=torch.tensor(pad))
    y = ours(x, src_key_padding_mask=pad)
    assert rel_err(y, y_ref.detach().numpy()) < TOL
    dy = rng.normal(size=y.shape)
    y_ref.backward(torch.tensor(dy))
    assert rel_err(ours.backward(dy), tx.grad.numpy()) < TOL
    assert_param_grads_match(ours, ref)


@given(cfg=layer_configs())
def test_decoder_layer_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])  # torch's initial weights too, so an example replays exactly
    kw = dict(dim_feedforward=cfg["F"], dropout=0.0, activation=cfg["activation"], norm_first=cfg["norm_first"],
              bias=cfg["bias"])
    ref = torch.nn.TransformerDecoderLayer(cfg["E"], cfg["H"], batch_first=True, dtype=torch.float64, **kw)
    ours = nn.TransformerDecoderLayer(cfg["E"], cfg["H"], dtype="float64", **kw)
    load_from_torch(ours, ref)
    B, T, S, E = cfg["B"], cfg["T"], cfg["S"], cfg["E"]
    tgt, mem = rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))
    mpad = padding_mask(rng, B, S)
    ttgt, tmem = leaf(tgt), leaf(mem)
    y_ref = ref(ttgt, tmem, tgt_mask=torch.tensor(causal(T)), memory_key_padding_mask=torch.tensor(mpad))
    y = ours(tgt, mem, tgt_is_causal=True, memory_key_padding_mask=mpad)
    assert rel_err(y, y_ref.detach().numpy()) < TOL
    dy = rng.normal(size=y.shape)
    y_ref.backward(torch.tensor(dy))
    dtgt, dmem = ours.backward(dy)
    assert rel_err(dtgt, ttgt.grad.numpy()) < TOL
    assert rel_err(dmem, tmem.grad.numpy()) < TOL
    assert_param_grads_match(ours, ref)


@given(cfg=layer_configs(), n_enc=st.integers(1, 2), n_dec=st.integers(1, 2), float_mask=st.booleans())
def test_transformer_matches_torch(cfg, n_enc, n_dec, float_mask):
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])  # torch's initial weights too, so an example replays exactly
    B, T, S, E = cfg["B"], cfg["T"], cfg["S"], cfg["E"]
    kw = dict(num_encoder_layers=n_enc, num_decoder_layers=n_dec, dim_feedforward=cfg["F"], dropout=0.0,
              activation=cfg["activation"], norm_first=cfg["norm_first"], bias=cfg["bias"])
    ref = torch.nn.Transformer(E, cfg["H"], batch_first=True, dtype=torch.float64, **kw)
    ours = nn.Transformer(E, cfg["H"], dtype="float64", **kw)
    load_from_torch(ours, ref)
    src, tgt = rng.normal(size=(B, S, E)), rng.normal(size=(B, T, E))
    spad, tpad = padding_mask(rng, B, S), padding_mask(rng, B, T)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(T, dtype="float64") if float_mask else causal(T)
    tsrc, ttgt = leaf(src), leaf(tgt)
    y_ref = ref(tsrc, ttgt, tgt_mask=torch.tensor(np.asarray(tgt_mask)), src_key_padding_mask=torch.tensor(spad),
                tgt_key_padding_mask=torch.tensor(tpad), memory_key_padding_mask=torch.tensor(spad))
    y = ours(src, tgt, tgt_mask=tgt_mask, src_key_padding_mask=spad, tgt_key_padding_mask=tpad,
             memory_key_padding_mask=spad)
    assert rel_err(y, y_ref.detach().numpy()) < TOL
    dy = rng.normal(size=y.shape)
    y_ref.backward(torch.tensor(dy))
    dsrc, dtgt = ours.backward(dy)
    assert rel_err(dsrc, tsrc.grad.numpy()) < TOL
    assert rel_err(dtgt, ttgt.grad.numpy()) < TOL
    assert_param_grads_match(ours, ref)


def test_state_dict_goes_back_into_torch():
    ours = nn.Transformer(8, 2, 1, 1, dim_feedforward=16, dropout=0.0, dtype="float64")
    ref = torch.nn.Transformer(8, 2, 1, 1, dim_feedforward=16, dropout=0.0, batch_first=True, dtype=torch.float64)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 4, 8))
    y_ref = ref(torch.tensor(src), torch.tensor(tgt)).detach().numpy()
    assert rel_err(ours(src, tgt), y_ref) < TOL


def test_generate_square_subsequent_mask_matches_torch():
    np.testing.assert_array_equal(np.asarray(nn.Transformer.generate_square_subsequent_mask(4)),
                                  torch.nn.Transformer.generate_square_subsequent_mask(4).numpy())
