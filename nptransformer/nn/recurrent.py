"""``LSTM``, ``GRU``, ``LSTMCell``, ``GRUCell``: torch.nn's recurrent layers, backpropagated through time by hand.

A recurrent layer applies one cell (:mod:`nptransformer.functional.recurrent`)
at every time step, feeding each step the state the previous one produced:

    state_0 = hx (zeros by default)
    state_t = cell(x_t, state_{t-1})        t = 1 .. T
    output_t = h_t

Its backward walks time in reverse (backpropagation through time): the
gradient of state_{t-1} is what the cell's backward returns at step t plus
nothing else, and the weights' gradients are the sums of every step's
(docs/ops/recurrent.md). A bidirectional layer runs a second set of weights
from t = T down to 1 and concatenates both outputs; a stack of
``num_layers`` feeds each layer's outputs to the next (with dropout between
layers while training).

Variable lengths: ``forward(x, lengths=...)`` takes each sequence's length;
at a padded step the state is carried over unchanged and the output is 0,
so padded steps neither update the state nor receive gradient (what
``torch.nn.utils.rnn.pack_padded_sequence`` gives). The reverse direction
of a sequence of length n starts at its step n.

Constructor arguments, parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``
...), gate order, initialisation and shapes are torch's, so state_dicts move
both ways.

>>> import numpy as np
>>> lstm = LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True)
>>> out, (h_n, c_n) = lstm(np.ones((2, 4, 3), dtype=np.float32), lengths=[4, 2])
>>> out.shape, h_n.shape, float(abs(out[1, 2:]).max())   # padded steps output 0
((2, 4, 10), (4, 2, 5), 0.0)
>>> dx = lstm.backward(np.ones_like(out))
>>> dx.shape, float(abs(dx[1, 2:]).max())                 # ... and get no gradient
((2, 4, 3), 0.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import get_array_module, to_numpy
from ..kernels import ops
from ..registry import ModuleCheck, register_module_check
from .dropout import Dropout
from .module import Module, Parameter

_GATES = {"LSTM": 4, "GRU": 3}


def _cell_ops(mode: str) -> tuple[Any, Any]:
    return (ops.lstm_cell_forward, ops.lstm_cell_backward) if mode == "LSTM" else (ops.gru_cell_forward,
                                                                                    ops.gru_cell_backward)


def _uniform(g: Any, shape: tuple, hidden_size: int, dtype: Any) -> Parameter:
    bound = 1.0 / math.sqrt(hidden_size)  # torch's init of every recurrent weight and bias
    return Parameter(g.uniform(shape, -bound, bound, dtype=dtype))


def _lengths_mask(lengths: Any, T: int, B: int, like: Any) -> Any:
    """Per-sequence lengths (B,) -> active (T, B, 1) bool on ``like``'s backend: step t < length."""
    host = to_numpy(lengths) if _checks.is_array(lengths) else np.asarray(lengths)
    if host.shape != (B,) or host.dtype.kind not in "iu":
        raise ValueError(f"lengths must be {B} integers (one per sequence), got {host.dtype} array of shape "
                         f"{host.shape}")
    if host.size and (host.min() < 1 or host.max() > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the padded sequence length), got values from "
                         f"{host.min()} to {host.max()}")
    with backend.use(backend.backend_of(like)):
        return backend.asarray((np.arange(T)[:, None] < host[None, :])[:, :, None])


def _map_state(state: Any, f: Any) -> Any:
    """f applied to a state: None, an array, or a pair of them (the LSTM's (h, c), parts may be None)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(None if a is None else f(a) for a in state)
    return f(state)


class _RNNBase(Module):
    """The shared machinery of :class:`LSTM` and :class:`GRU` (``mode``); see the module docstring."""

    mode = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_positive_int("input_size", input_size)
        _checks.check_positive_int("hidden_size", hidden_size)
        _checks.check_positive_int("num_layers", num_layers)
        _checks.check_probability("dropout", dropout)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.drop = Dropout(dropout)  # between layers; it has no parameters, so state_dict keys stay torch's
        g = generator or backend.default_generator
        G, H = _GATES[self.mode], hidden_size
        for layer in range(num_layers):
            for suffix in self._suffixes():
                n_in = input_size if layer == 0 else H * self.num_directions
                setattr(self, f"weight_ih_l{layer}{suffix}", _uniform(g, (G * H, n_in), H, dtype))
                setattr(self, f"weight_hh_l{layer}{suffix}", _uniform(g, (G * H, H), H, dtype))
                if bias:
                    setattr(self, f"bias_ih_l{layer}{suffix}", _uniform(g, (G * H,), H, dtype))
                    setattr(self, f"bias_hh_l{layer}{suffix}", _uniform(g, (G * H,), H, dtype))

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse")[:self.num_directions]

    def _weights(self, layer: int, suffix: str) -> list[Parameter | None]:
        return [self._parameters.get(f"{kind}_l{layer}{suffix}")
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    # -- the state as the cells see it: (2, B, H) for the LSTM, (B, H) for the GRU --------------
    def _initial_states(self, hx: Any, B: int, like: Any) -> list[Any]:
        """One cell state per (layer, direction), torch's order: l0, l0_reverse, l1, ..."""
        xp = get_array_module(like)
        n, H = self.num_layers * self.num_directions, self.hidden_size
        want = (n, B, H)
        if hx is None:
            zero = backend.zeros((2, B, H) if self.mode == "LSTM" else (B, H), like=like)
            return [zero] * n
        parts = hx if self.mode == "LSTM" else (hx,)
        if self.mode == "LSTM" and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError(f"hx must be a tuple (h_0, c_0) for an LSTM, got {type(hx).__name__}")
        for name, a in zip(("h_0", "c_0"), parts):
            _checks.check_float(name, a)
            _checks.check_same_dtype(input=like, **{name: a})
            if tuple(a.shape) != want:
                raise ValueError(f"{name} must have shape {want} (num_layers * num_directions, B, hidden_size), "
                                 f"got {tuple(a.shape)}")
        if self.mode == "LSTM":
            return [xp.stack([hx[0][k, ...], hx[1][k, ...]]) for k in range(n)]
        return [hx[k, ...] for k in range(n)]

    def _hidden(self, state: Any) -> Any:
        return state[0, ...] if self.mode == "LSTM" else state

    def _emit(self, dh: Any) -> Any:
        """The gradient of a cell state whose hidden part alone receives ``dh``."""
        if self.mode == "GRU":
            return dh
        xp = get_array_module(dh)
        return xp.stack([dh, xp.zeros_like(dh)])

    # -- one direction of one layer -------------------------------------------------------------
    def _run(self, x: Any, state: Any, weights: list, reverse: bool, active: Any) -> tuple[Any, Any, list]:
        """x (T, B, C), state -> outputs (T, B, H), final state, the cells' contexts."""
        xp = get_array_module(x)
        forward, _ = _cell_ops(self.mode)
        arrays = [None if w is None else w.data for w in weights]
        T = x.shape[0]
        outs, ctxs = [None] * T, [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            new, ctxs[t] = forward(x[t, ...], state, *arrays)
            h = self._hidden(new)
            if active is not None:  # a padded step keeps the state and outputs 0
                state = xp.where(active[t, ...], new, state)
                h = xp.where(active[t, ...], h, xp.zeros_like(h))
            else:
                state = new
            outs[t] = h
        return xp.stack(outs), state, ctxs

    def _run_backward(self, dout: Any, dstate: Any, ctxs: list, weights: list, reverse: bool,
                      active: Any) -> tuple[Any, Any]:
        """dL/doutputs (T, B, H) and dL/d(final state) -> dL/dx (T, B, C), dL/d(initial state).

        Walks time opposite to the forward, adding each step's weight gradients into the parameters.
        """
        xp = get_array_module(dout)
        _, backward = _cell_ops(self.mode)
        T = dout.shape[0]
        dx, sums = [None] * T, [None] * 4
        for t in (range(T) if reverse else range(T - 1, -1, -1)):
            dnew = dstate + self._emit(dout[t, ...])  # forward: state_t = new, output_t = hidden(new)
            if active is not None:  # forward: state_t = where(active, new, state_{t-1})
                dkeep = xp.where(active[t, ...], xp.zeros_like(dstate), dstate)
                dnew = xp.where(active[t, ...], dnew, xp.zeros_like(dnew))
            dx[t], dprev, *dws = backward(dnew, ctxs[t])  # forward: new = cell(x_t, state_{t-1})
            dstate = dprev if active is None else dprev + dkeep
            sums = [s if d is None else (d if s is None else s + d) for s, d in zip(sums, dws)]
        for w, s in zip(weights, sums):
            if w is not None:
                w.accumulate(s)
        return xp.stack(dx), dstate

    # -- the layer -------------------------------------------------------------------------------
    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Any, Any]:
        """input (T, B, input_size), or (B, T, input_size) with ``batch_first`` -> (output, h_n).

        output (T, B, D * hidden_size) (batch first with ``batch_first``), D = 2 when
        bidirectional; h_n (num_layers * D, B, hidden_size), the last state of every layer and
        direction (for an LSTM the pair (h_n, c_n)). ``hx``: the initial state, same shapes
        as h_n (LSTM: a pair); zeros by default. ``lengths`` (B,) ints in [1, T]: each
        sequence's length; steps past it are padding. As in torch, an unbatched input
        (T, input_size) gives output (T, D * hidden_size) and states without the batch axis.
        """
        _checks.check_float("input", input)
        _checks.check_ndim("input", input, (2, 3))
        _checks.check_last_dim("input", input, self.input_size, "input_size")
        xp = get_array_module(input)
        unbatched = input.ndim == 2
        if unbatched:
            if lengths is not None:
                raise ValueError("lengths needs a batch of sequences; got an unbatched input of shape "
                                 f"{tuple(input.shape)}")
            input = xp.expand_dims(input, axis=self._batch_axis)
            hx = _map_state(hx, lambda a: xp.expand_dims(a, axis=1) if a.ndim == 2 else a)
        x = xp.permute_dims(input, (1, 0, 2)) if self.batch_first else input  # time-major from here on
        T, B = x.shape[0], x.shape[1]
        active = None if lengths is None else _lengths_mask(lengths, T, B, x)
        states = self._initial_states(hx, B, x)
        finals, contexts = [], []
        for layer in range(self.num_layers):
            if layer > 0:
                x = self.drop(x)
            outs = []
            for d, suffix in enumerate(self._suffixes()):
                k = layer * self.num_directions + d
                out, final, ctxs = self._run(x, states[k], self._weights(layer, suffix), d == 1, active)
                outs.append(out)
                finals.append(final)
                contexts.append(ctxs)
            x = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-1)
        self.save_for_backward((contexts, active, hx is not None, unbatched))
        output = xp.permute_dims(x, (1, 0, 2)) if self.batch_first else x
        hidden = xp.stack([self._hidden(s) for s in finals])
        state = (hidden, xp.stack([s[1, ...] for s in finals])) if self.mode == "LSTM" else hidden
        if unbatched:
            return xp.squeeze(output, axis=self._batch_axis), _map_state(state, lambda a: xp.squeeze(a, axis=1))
        return output, state

    @property
    def _batch_axis(self) -> int:
        return 0 if self.batch_first else 1

    def backward(self, doutput: Any, dstate: Any = None) -> Any:
        """dL/doutput (shaped as output) and, optionally, dL/dh_n (LSTM: a pair, either part may be
        None) -> dL/dinput; adds into every weight's gradient.

        Returns ``(dinput, dhx)`` when the forward was given ``hx`` (dhx shaped as hx), else dinput.
        """
        contexts, active, had_hx, unbatched = self.saved()
        xp = get_array_module(doutput)
        if unbatched:
            doutput = xp.expand_dims(doutput, axis=self._batch_axis)
            dstate = _map_state(dstate, lambda a: xp.expand_dims(a, axis=1))
        d = xp.permute_dims(doutput, (1, 0, 2)) if self.batch_first else doutput
        B, H = d.shape[1], self.hidden_size
        dfinals = self._final_grads(dstate, B, d)
        dinitial = [None] * len(dfinals)
        for layer in range(self.num_layers - 1, -1, -1):
            dx = None
            for dir_, suffix in enumerate(self._suffixes()):
                k = layer * self.num_directions + dir_
                dpart = d[..., dir_ * H:(dir_ + 1) * H]
                dxd, dinitial[k] = self._run_backward(dpart, dfinals[k], contexts[k], self._weights(layer, suffix),
                                                      dir_ == 1, active)
                dx = dxd if dx is None else dx + dxd
            d = self.drop.backward(dx) if layer > 0 else dx  # forward: x = drop(previous layer's output)
        dinput = xp.permute_dims(d, (1, 0, 2)) if self.batch_first else d
        if self.mode == "LSTM":
            dhx = (xp.stack([s[0, ...] for s in dinitial]), xp.stack([s[1, ...] for s in dinitial]))
        else:
            dhx = xp.stack(dinitial)
        if unbatched:
            dinput = xp.squeeze(dinput, axis=self._batch_axis)
            dhx = _map_state(dhx, lambda a: xp.squeeze(a, axis=1))
        return (dinput, dhx) if had_hx else dinput

    def _final_grads(self, dstate: Any, B: int, like: Any) -> list[Any]:
        """dL/dh_n (and dL/dc_n) as one cell-state gradient per (layer, direction); zeros where not given."""
        xp = get_array_module(like)
        n, H = self.num_layers * self.num_directions, self.hidden_size
        zero = backend.zeros((B, H), like=like)
        parts = (dstate if dstate is not None else (None, None)) if self.mode == "LSTM" else (dstate,)
        if self.mode == "LSTM" and not (isinstance(parts, tuple) and len(parts) == 2):
            raise TypeError(f"dstate must be a pair (dh_n, dc_n) for an LSTM (either may be None), got "
                            f"{type(dstate).__name__}")
        for name, a in zip(("dh_n", "dc_n"), parts):
            if a is not None and tuple(a.shape) != (n, B, H):
                raise ValueError(f"{name} must have shape {(n, B, H)}, got {tuple(a.shape)}")
        per = [[zero] * n if a is None else [a[k, ...] for k in range(n)] for a in parts]
        if self.mode == "LSTM":
            return [xp.stack([dh, dc]) for dh, dc in zip(*per)]
        return per[0]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, dropout={self.drop.p}, bidirectional={self.bidirectional}")


class LSTM(_RNNBase):
    """torch.nn.LSTM: ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``; ``forward(input, hx=None, lengths=None) -> (output, (h_n, c_n))``.

    Shapes: input (T, B, I) or (B, T, I) batch first; output (.., D * H); h_n, c_n (num_layers * D, B, H).
    """

    mode = "LSTM"


class GRU(_RNNBase):
    """torch.nn.GRU: ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``; ``forward(input, hx=None, lengths=None) -> (output, h_n)``.

    Shapes: input (T, B, I) or (B, T, I) batch first; output (.., D * H); h_n (num_layers * D, B, H).
    """

    mode = "GRU"


class _CellBase(Module):
    mode = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = "float32",
                 generator: Any = None):
        super().__init__()
        _checks.check_positive_int("input_size", input_size)
        _checks.check_positive_int("hidden_size", hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        g = generator or backend.default_generator
        G, H = _GATES[self.mode], hidden_size
        self.weight_ih = _uniform(g, (G * H, input_size), H, dtype)
        self.weight_hh = _uniform(g, (G * H, H), H, dtype)
        self.bias_ih = _uniform(g, (G * H,), H, dtype) if bias else None
        self.bias_hh = _uniform(g, (G * H,), H, dtype) if bias else None

    def _params(self) -> list[Parameter | None]:
        return [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]

    def _batched(self, input: Any, hx: Any) -> tuple[Any, Any, bool]:
        """Checks input; an unbatched input (I,) and its hx (H,) get a batch axis of 1, as torch allows."""
        _checks.check_float("input", input)
        _checks.check_ndim("input", input, (1, 2))
        _checks.check_last_dim("input", input, self.input_size, "input_size")
        if input.ndim == 2:
            return input, hx, False
        xp = get_array_module(input)
        return xp.expand_dims(input, axis=0), _map_state(hx, lambda a: xp.expand_dims(a, axis=0)), True

    def _step(self, x: Any, state: Any, unbatched: bool, had_hx: bool) -> Any:
        forward, _ = _cell_ops(self.mode)
        new, ctx = forward(x, state, *[None if p is None else p.data for p in self._params()])
        self.save_for_backward((ctx, had_hx, unbatched))
        return new

    def _step_backward(self, dnew: Any, ctx: Any) -> tuple[Any, Any]:
        _, backward = _cell_ops(self.mode)
        dx, dstate, *dws = backward(dnew, ctx)
        for p, g in zip(self._params(), dws):
            if p is not None:
                p.accumulate(g)
        return dx, dstate

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell: one step, ``forward(input (B, I), hx=(h, c) or None) -> (h', c')``, each (B, H).

    An unbatched input (I,) takes and gives states (H,).
    """

    mode = "LSTM"

    def forward(self, input: Any, hx: Any = None) -> tuple[Any, Any]:
        """input (B, I), hx = (h (B, H), c (B, H)) or None (zeros) -> (h' (B, H), c' (B, H))."""
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError(f"hx must be a tuple (h, c) or None, got {type(hx).__name__}")
        x, hx_b, unbatched = self._batched(input, hx)
        xp = get_array_module(x)
        state = backend.zeros((2, x.shape[0], self.hidden_size), like=x) if hx is None else xp.stack(list(hx_b))
        new = self._step(x, state, unbatched, hx is not None)
        h, c = new[0, ...], new[1, ...]
        return (h[0, ...], c[0, ...]) if unbatched else (h, c)

    def backward(self, dout: Any) -> Any:
        """dout = dL/dh' or a pair (dL/dh', dL/dc') (either may be None) -> dL/dinput, or
        (dL/dinput, (dL/dh, dL/dc)) when the forward was given hx."""
        ctx, had_hx, unbatched = self.saved()
        dh, dc = dout if isinstance(dout, tuple) else (dout, None)
        like = dh if dh is not None else dc
        xp = get_array_module(like)
        dh, dc = (xp.zeros_like(like) if a is None else a for a in (dh, dc))
        dnew = xp.stack([dh, dc])
        if unbatched:
            dnew = xp.expand_dims(dnew, axis=1)
        dx, dstate = self._step_backward(dnew, ctx)
        dhx = (dstate[0, ...], dstate[1, ...])
        if unbatched:
            dx, dhx = dx[0, ...], (dhx[0][0, ...], dhx[1][0, ...])
        return (dx, dhx) if had_hx else dx


class GRUCell(_CellBase):
    """torch.nn.GRUCell: one step, ``forward(input (B, I), hx (B, H) or None) -> h' (B, H)``.

    An unbatched input (I,) takes and gives a state (H,).
    """

    mode = "GRU"

    def forward(self, input: Any, hx: Any = None) -> Any:
        """input (B, I), hx (B, H) or None (zeros) -> h' (B, H)."""
        if hx is not None:
            _checks.check_float("hx", hx)
        x, hx_b, unbatched = self._batched(input, hx)
        state = backend.zeros((x.shape[0], self.hidden_size), like=x) if hx is None else hx_b
        new = self._step(x, state, unbatched, hx is not None)
        return new[0, ...] if unbatched else new

    def backward(self, dout: Any) -> Any:
        """dL/dh' -> dL/dinput, or (dL/dinput, dL/dhx) when the forward was given hx."""
        ctx, had_hx, unbatched = self.saved()
        if unbatched:
            dout = get_array_module(dout).expand_dims(dout, axis=0)
        dx, dh = self._step_backward(dout, ctx)
        if unbatched:
            dx, dh = dx[0, ...], dh[0, ...]
        return (dx, dh) if had_hx else dx


def _check_layer(cls: type, with_hx: bool, **options: Any) -> Any:
    def build(rng: Any) -> ModuleCheck:
        rnn = cls(3, 2, dtype="float64", **options)
        D = 2 if options.get("bidirectional") else 1
        n = D * options.get("num_layers", 1)
        x = rng.normal(size=(3, 4, 3))  # batch first: B = 3, T = 4
        kwargs = {"lengths": [4, 2, 3]} if options.get("batch_first") else {}
        if not options.get("batch_first"):
            x = x[:2]  # time-major: T = 2, B = 4
        B = x.shape[0] if options.get("batch_first") else x.shape[1]
        if not with_hx:
            return ModuleCheck(rnn, (x,), kwargs)
        if cls is GRU:
            return ModuleCheck(rnn, (x, rng.normal(size=(n, B, 2))), kwargs)
        hx = tuple(backend.asarray(rng.normal(size=(n, B, 2))) for _ in range(2))
        return ModuleCheck(rnn, (x, hx), kwargs, wrt=(0,))

    return build


def _check_cell(cls: type) -> Any:
    def build(rng: Any) -> ModuleCheck:
        x = rng.normal(size=(2, 3))
        if cls is GRUCell:
            return ModuleCheck(cls(3, 4, dtype="float64"), (x, rng.normal(size=(2, 4))))
        hx = tuple(backend.asarray(rng.normal(size=(2, 4))) for _ in range(2))
        return ModuleCheck(cls(3, 4, dtype="float64"), (x, hx), wrt=(0,))

    return build


register_module_check("LSTMCell", _check_cell(LSTMCell))
register_module_check("GRUCell", _check_cell(GRUCell))
register_module_check("LSTM.time_major", _check_layer(LSTM, False))
register_module_check("GRU.time_major_hx", _check_layer(GRU, True))
register_module_check("GRU.unbatched", lambda rng: ModuleCheck(GRU(3, 2, dtype="float64"), (rng.normal(size=(4, 3)),)))
register_module_check("LSTM.bidirectional_2layers_lengths",
                      _check_layer(LSTM, True, num_layers=2, bidirectional=True, batch_first=True, dropout=0.3))
register_module_check("GRU.bidirectional_2layers_lengths",
                      _check_layer(GRU, False, num_layers=2, bidirectional=True, batch_first=True, dropout=0.3))
