"""nn.LSTM / nn.GRU / their cells against torch.nn in float64: outputs, final states, input and
initial-state gradients and every parameter gradient to 1e-9, weights moved through state_dict
both ways; variable lengths against pack_padded_sequence."""

from __future__ import annotations

import numpy as np
import pytest

from nptransformer import nn

torch = pytest.importorskip("torch", reason="torch is the reference for the recurrent layers")

TOL = 1e-9


def _close(ours, theirs, what):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL, err_msg=what)


def _close_parameter_gradients(ours, ref):
    named = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad, named[name].grad, f"gradient of {name}")


def _torch_run(ref, x, hx, lengths, batch_first, cot_out, cot_h):
    xt = torch.tensor(x, requires_grad=True)
    hxt = None if hx is None else (tuple(torch.tensor(a, requires_grad=True) for a in hx) if isinstance(hx, tuple)
                                   else torch.tensor(hx, requires_grad=True))
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    out, state = ref(inp, hxt)
    if lengths is not None:
        total = x.shape[1] if batch_first else x.shape[0]
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=total)
    states = state if isinstance(state, tuple) else (state,)
    loss = (out * torch.tensor(cot_out)).sum() + sum((s * torch.tensor(c)).sum() for s, c in zip(states, cot_h))
    loss.backward()
    return out, states, xt, hxt


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional,num_layers,batch_first,with_lengths,with_hx", [
    (False, 1, False, False, False),
    (True, 2, True, True, True),
    (True, 2, False, True, False),
    (False, 2, True, False, True),
])
def test_matches_torch(mode, bidirectional, num_layers, batch_first, with_lengths, with_hx):
    rng = np.random.default_rng(0)
    I, H, B, T = 3, 4, 3, 5
    ref = getattr(torch.nn, mode)(I, H, num_layers=num_layers, batch_first=batch_first,
                                  bidirectional=bidirectional).double()
    ours = getattr(nn, mode)(I, H, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional,
                             dtype="float64")
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())  # torch -> ours
    x = rng.normal(size=(B, T, I) if batch_first else (T, B, I))
    D = 2 if bidirectional else 1
    n = num_layers * D
    hx = None
    if with_hx:
        hx = tuple(rng.normal(size=(n, B, H)) for _ in range(2)) if mode == "LSTM" else rng.normal(size=(n, B, H))
    lengths = [5, 2, 4] if with_lengths else None
    out, state = ours(x, hx, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    cot_out = rng.normal(size=out.shape)
    cot_h = [rng.normal(size=s.shape) for s in states]
    dstate = tuple(cot_h) if mode == "LSTM" else cot_h[0]
    grads = ours.backward(cot_out, dstate)
    t_out, t_states, xt, hxt = _torch_run(ref, x, hx, lengths, batch_first, cot_out, cot_h)

    _close(out, t_out, "output")
    for s, ts in zip(states, t_states):
        _close(s, ts, "final state")
    dx = grads[0] if with_hx else grads
    _close(dx, xt.grad, "input gradient")
    if with_hx:
        dhx = grads[1] if mode == "LSTM" else (grads[1],)
        for g, t in zip(dhx, hxt if isinstance(hxt, tuple) else (hxt,)):
            _close(g, t.grad, "initial state gradient")
    _close_parameter_gradients(ours, ref)
    if with_lengths:  # padded steps get no gradient
        pad = (np.arange(T)[None, :] >= np.array(lengths)[:, None])
        assert np.all(np.where(pad[..., None] if batch_first else pad.T[..., None], dx, 0.0) == 0.0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_matches_torch(mode, batch_first):
    rng = np.random.default_rng(3)
    ref = getattr(torch.nn, mode)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    ours = getattr(nn, mode)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, dtype="float64")
    ours.load_state_dict(ref.state_dict())
    x = rng.normal(size=(5, 3))  # (T, I): torch's unbatched input, whatever batch_first says
    hx = tuple(rng.normal(size=(4, 4)) for _ in range(2)) if mode == "LSTM" else rng.normal(size=(4, 4))
    out, state = ours(x, hx)
    states = state if isinstance(state, tuple) else (state,)
    cot_out, cot_h = rng.normal(size=out.shape), [rng.normal(size=s.shape) for s in states]
    dx, dhx = ours.backward(cot_out, tuple(cot_h) if mode == "LSTM" else cot_h[0])
    t_out, t_states, xt, hxt = _torch_run(ref, x, hx, None, batch_first, cot_out, cot_h)
    assert out.shape == (5, 8)
    _close(out, t_out, "output")
    for s, ts in zip(states, t_states):
        _close(s, ts, "final state")
    _close(dx, xt.grad, "input gradient")
    for g, t in zip(dhx if mode == "LSTM" else (dhx,), hxt if mode == "LSTM" else (hxt,)):
        _close(g, t.grad, "initial state gradient")
    _close_parameter_gradients(ours, ref)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_state_dict_ours_to_torch(mode):
    rng = np.random.default_rng(1)
    ours = getattr(nn, mode)(2, 3, num_layers=2, bidirectional=True, dtype="float64")
    ref = getattr(torch.nn, mode)(2, 3, num_layers=2, bidirectional=True).double()
    ref.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})  # ours -> torch
    x = rng.normal(size=(4, 2, 2))
    out, _ = ours(x)
    _close(out, ref(torch.tensor(x))[0], "output after ours -> torch")


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batch", [(2,), ()], ids=["batched", "unbatched"])
def test_cells_match_torch(mode, batch):
    rng = np.random.default_rng(2)
    ref = getattr(torch.nn, mode)(3, 4).double()
    ours = getattr(nn, mode)(3, 4, dtype="float64")
    ours.load_state_dict(ref.state_dict())
    x = rng.normal(size=batch + (3,))
    hx = tuple(rng.normal(size=batch + (4,)) for _ in range(2)) if mode == "LSTMCell" else rng.normal(size=batch + (4,))
    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(a, requires_grad=True) for a in hx) if mode == "LSTMCell" else torch.tensor(
        hx, requires_grad=True)
    out = ours(x, hx)
    t_out = ref(xt, hxt)
    outs, t_outs = (out, t_out) if mode == "LSTMCell" else ((out,), (t_out,))
    cots = [rng.normal(size=o.shape) for o in outs]
    sum((o * torch.tensor(c)).sum() for o, c in zip(t_outs, cots)).backward()
    dx, dhx = ours.backward(tuple(cots) if mode == "LSTMCell" else cots[0])
    for o, t in zip(outs, t_outs):
        _close(o, t, "output")
    _close(dx, xt.grad, "input gradient")
    for g, t in zip(dhx if mode == "LSTMCell" else (dhx,), hxt if mode == "LSTMCell" else (hxt,)):
        _close(g, t.grad, "state gradient")
    _close_parameter_gradients(ours, ref)


def test_bad_input_names_the_argument():
    lstm = nn.LSTM(3, 4, batch_first=True)
    with pytest.raises(ValueError, match="input_size"):
        lstm(np.ones((2, 5, 2)))
    with pytest.raises(ValueError, match="lengths"):
        lstm(np.ones((2, 5, 3)), lengths=[6, 1])
    with pytest.raises(ValueError, match="h_0"):
        lstm(np.ones((2, 5, 3)), (np.ones((1, 3, 4)), np.ones((1, 3, 4))))
    with pytest.raises(TypeError, match="hx"):
        lstm(np.ones((2, 5, 3)), np.ones((1, 2, 4)))
    with pytest.raises(ValueError, match="lengths"):
        lstm(np.ones((5, 3)), lengths=[5])
    with pytest.raises(ValueError, match="dropout"):
        nn.GRU(3, 4, dropout=1.5)
