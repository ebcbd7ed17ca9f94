"""Model-level facts: parameter counts and FLOPs against closed forms, bad input, GPT vs torch."""

import numpy as np
import pytest

from nptransformer import GPT, Seq2SeqTransformer


@pytest.mark.parametrize("L,C,V,T", [(1, 8, 11, 4), (3, 16, 50, 32)])
def test_gpt_parameter_count_is_the_closed_form(L, C, V, T):
    model = GPT(vocab_size=V, block_size=T, n_layer=L, n_head=2, d_model=C)
    assert model.num_parameters() == 12 * L * C * C + 13 * L * C + 2 * C + V * C + T * C
    untied = GPT(vocab_size=V, block_size=T, n_layer=L, n_head=2, d_model=C, tie_weights=False)
    assert untied.num_parameters() == model.num_parameters() + V * C
    no_bias = GPT(vocab_size=V, block_size=T, n_layer=L, n_head=2, d_model=C, bias=False)
    assert no_bias.num_parameters() == 12 * L * C * C + 2 * L * C + C + V * C + T * C


def test_gpt_flops_per_token_is_six_n_plus_attention():
    L, C, V, T = 2, 16, 40, 12
    model = GPT(vocab_size=V, block_size=T, n_layer=L, n_head=2, d_model=C)
    n_matmul = 12 * L * C * C + 13 * L * C + 2 * C + V * C
    assert model.flops_per_token() == 6 * n_matmul + 12 * L * T * C
    assert model.flops_per_token(seq_len=4) == 6 * n_matmul + 12 * L * 4 * C


def test_gpt_refuses_too_long_and_bad_ids():
    model = GPT(vocab_size=5, block_size=4, n_layer=1, n_head=1, d_model=4)
    with pytest.raises(ValueError, match="exceeds block_size 4"):
        model(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="idx must be an integer array"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="idx must have shape"):
        model(np.zeros((3,), dtype=np.int64))
    with pytest.raises(ValueError, match="idx"):
        model(np.array([[0, 5]]))  # id out of range


def test_gpt_heads_must_divide_width():
    with pytest.raises(ValueError, match="nhead \\(3\\) must divide d_model \\(8\\)"):
        GPT(vocab_size=5, block_size=4, n_layer=1, n_head=3, d_model=8)


def test_seq2seq_checks_batch_and_length():
    m = Seq2SeqTransformer(7, 7, d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=8, max_len=5)
    with pytest.raises(ValueError, match="same batch size"):
        m(np.zeros((2, 3), dtype=np.int64), np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="exceeds max_len 5"):
        m(np.zeros((1, 6), dtype=np.int64), np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="share_embeddings"):
        Seq2SeqTransformer(7, 8, share_embeddings=True)


def test_gpt_matches_an_equivalent_torch_model():
    torch = pytest.importorskip("torch", reason="the GPT parity test needs torch")
    F = torch.nn.functional
    V, T, L, H, C = 13, 6, 2, 2, 8
    ours = GPT(vocab_size=V, block_size=T, n_layer=L, n_head=H, d_model=C, dtype="float64")
    wte = torch.nn.Embedding(V, C, dtype=torch.float64)
    wpe = torch.nn.Embedding(T, C, dtype=torch.float64)
    blocks = torch.nn.ModuleList([
        torch.nn.TransformerEncoderLayer(C, H, 4 * C, 0.0, activation=lambda x: F.gelu(x, approximate="tanh"),
                                         batch_first=True, norm_first=True, dtype=torch.float64)
        for _ in range(L)
    ])
    ln_f = torch.nn.LayerNorm(C, dtype=torch.float64)
    ref = torch.nn.ModuleDict(dict(wte=wte, wpe=wpe, blocks=blocks, ln_f=ln_f))
    ref.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    idx = np.random.default_rng(0).integers(0, V, size=(3, T))
    ti = torch.tensor(idx)
    x = wte(ti) + wpe(torch.arange(T))
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for b in blocks:
        x = b(x, src_mask=mask)
    logits_ref = ln_f(x) @ wte.weight.T
    logits = ours(idx)
    np.testing.assert_allclose(logits, logits_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    d = np.random.default_rng(1).normal(size=logits.shape)
    logits_ref.backward(torch.tensor(d))
    ours.backward(d)
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, ref_grads[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
