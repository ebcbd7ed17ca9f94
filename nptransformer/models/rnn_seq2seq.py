"""``RNNSeq2Seq``: the recurrent encoder-decoder the Transformer replaced, with or without attention.

    H = BiRNN(E_src[src])                                 # (B, S, 2C): forward and backward states
    z = [H_fwd at the last real step; H_bwd at step 0]    # (B, 2C): the top layer's final states
    s_0 = tanh(W_b z + b_b)   (LSTM: c_0 = W_c z + b_c)   # every decoder layer starts from the summary

then, per ``attention``:

- ``None`` (Sutskever et al., 2014; Cho et al., 2014): s_t = RNN(E_tgt[y_{t-1}], s_{t-1}),
  logits_t = W_o s_t. Everything the decoder knows about the source passes through z,
  the fixed-size "thought vector".
- ``"bahdanau"`` (Bahdanau et al., 2015): c_t = Attn(s_{t-1}, H), s_t = RNN([E_tgt[y_{t-1}]; c_t], s_{t-1}),
  logits_t = W_o [s_t; c_t]; one step at a time, since c_t needs s_{t-1}.
- ``"luong"`` (Luong et al., 2015, without input feeding): s_t = RNN(E_tgt[y_{t-1}], s_{t-1}) over the
  whole target at once, then s~_t = tanh(W_c [Attn(s_t, H); s_t]), logits_t = W_o s~_t.

It offers the encoder-decoder decoding interface (:mod:`nptransformer.generation.interface`):
``encode``, ``decode`` with a cache, ``new_cache``, so :func:`~nptransformer.generation.greedy_decode`
and :func:`~nptransformer.generation.beam_search` drive it unchanged. The cache holds the
decoder's recurrent state instead of keys and values. :meth:`RNNSeq2Seq.attention_maps`
gives the attention weights in the (B, H, Tq, Tk) layout
:func:`nptransformer.viz.plot_attention` draws.

>>> import numpy as np
>>> from nptransformer.generation import greedy_decode
>>> m = RNNSeq2Seq(10, 10, embed_dim=4, hidden_size=6, attention="bahdanau", pad_id=0)
>>> m(np.array([[3, 4, 0]]), np.array([[1, 5]])).shape
(1, 2, 10)
>>> out = greedy_decode(m, np.array([[3, 4, 5]]), max_len=4, bos_id=1, eos_id=2)
>>> out.shape[1] <= 5, m.attention_maps()["attention"].shape[:2]
(True, (1, 1))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import get_array_module, to_numpy
from ..kernels import ops
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.recurrent import GRU, LSTM
from ..nn.rnn_attention import BahdanauAttention, LuongAttention
from ..registry import ModuleCheck, register_module_check

_CELLS = {"lstm": LSTM, "gru": GRU}
_ATTENTIONS = (None, "bahdanau", "luong")


class RNNDecoderCache:
    """What incremental decoding keeps between calls: the decoder's recurrent state.

    ``length``: target positions consumed so far; ``state``: the decoder's
    state after them (h (L, B, C), or (h, c) for an LSTM); ``weights``: their
    attention weights (B, length, S) when the model attends.
    """

    def __init__(self, capacity: int):
        _checks.check_positive_int("capacity", capacity)
        self.capacity, self.length, self.state, self.weights = capacity, 0, None, None

    def reorder(self, rows: Any) -> None:
        """Row i continues what row ``rows[i]`` held (beam search); rows (R',) integer array."""
        xp = get_array_module(rows)
        take = lambda a, axis: None if a is None else xp.take(a, rows, axis=axis)  # noqa: E731
        self.state = tuple(take(a, 1) for a in self.state) if isinstance(self.state, tuple) else take(self.state, 1)
        self.weights = take(self.weights, 0)


def _top(state: Any) -> Any:
    """The top layer's hidden state (B, C) of a decoder state."""
    h = state[0] if isinstance(state, tuple) else state
    return h[-1, ...]


def _add_to_top(dstate: Any, dh: Any) -> Any:
    """dstate with dh (B, C) added to the top layer's hidden part (the query read it)."""
    xp = get_array_module(dh)
    dh_all = dstate[0] if isinstance(dstate, tuple) else dstate
    dh_all = xp.concat([dh_all[:-1, ...], dh_all[-1:, ...] + dh[None, ...]], axis=0)
    return (dh_all, dstate[1]) if isinstance(dstate, tuple) else dh_all


class RNNSeq2Seq(Module):
    """Recurrent encoder-decoder over token ids: ``model(src, tgt)`` -> logits (B, T, tgt_vocab_size).

    ``cell``: "lstm" or "gru"; the encoder is bidirectional with ``hidden_size``
    per direction, the decoder has ``hidden_size``; both have ``num_layers``.
    ``attention``: None, "bahdanau" or "luong" (with ``score`` "dot" needing
    2 * hidden_size == hidden_size, so "general" or "concat" in practice).
    ``pad_id``: source padding is skipped by the encoder and masked in the
    attention. ``max_len``: the longest target decoding may produce (a
    recurrent decoder has no position table; the limit is for the decoding loops).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_dim: int = 32, hidden_size: int = 64,
                 num_layers: int = 1, cell: str = "lstm", attention: str | None = None, score: str = "general",
                 attention_size: int | None = None, dropout: float = 0.0, pad_id: int | None = None,
                 max_len: int = 512, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {list(_CELLS)}, got {cell!r}")
        if attention not in _ATTENTIONS:
            raise ValueError(f"attention must be one of {list(_ATTENTIONS)}, got {attention!r}")
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size),
                            ("embed_dim", embed_dim), ("hidden_size", hidden_size), ("max_len", max_len)):
            _checks.check_positive_int(name, value)
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.hidden_size, self.num_layers, self.cell, self.attention_type = hidden_size, num_layers, cell, attention
        self.pad_id, self.max_len = pad_id, max_len
        C, E, kw = hidden_size, embed_dim, {"dtype": dtype, "generator": generator}
        rnn = _CELLS[cell]
        self.src_embed = Embedding(src_vocab_size, E, dtype=dtype)
        self.tgt_embed = Embedding(tgt_vocab_size, E, dtype=dtype)
        self.encoder = rnn(E, C, num_layers, batch_first=True, dropout=dropout, bidirectional=True, **kw)
        self.bridge = Linear(2 * C, num_layers * C, **kw)
        self.bridge_c = Linear(2 * C, num_layers * C, **kw) if cell == "lstm" else None
        self.decoder = rnn(E + 2 * C if attention == "bahdanau" else E, C, num_layers, batch_first=True,
                           dropout=dropout, **kw)
        if attention == "bahdanau":
            self.attention = BahdanauAttention(C, 2 * C, attention_size or C, **kw)
        elif attention == "luong":
            self.attention = LuongAttention(C, 2 * C, score, out_size=C, attention_size=attention_size, **kw)
        else:
            self.attention = None
        self.dropout = Dropout(dropout)
        self.generator = Linear(3 * C if attention == "bahdanau" else C, tgt_vocab_size, **kw)
        self.attn_weights = None

    # -- the decoding interface (nptransformer.generation.interface) ----------------------------
    @property
    def max_target_positions(self) -> int:
        """The longest target the decoding loops may produce: ``max_len``."""
        return self.max_len

    def new_cache(self, capacity: int) -> RNNDecoderCache:
        """An empty cache for the decoder's recurrent state."""
        return RNNDecoderCache(capacity)

    def _lengths(self, src: Any) -> np.ndarray:
        host = to_numpy(src)
        if self.pad_id is None:
            return np.full(host.shape[0], host.shape[1], np.int64)
        lengths = (host != self.pad_id).sum(axis=1)
        if lengths.min() < 1:
            raise ValueError(f"every source row needs at least one token that is not pad_id={self.pad_id}")
        return lengths

    def encode(self, src: Any) -> Any:
        """src (B, S) ids -> memory (B, S, 2 * hidden_size): both directions' states at every source position."""
        _checks.check_token_ids("src", src, self.src_vocab_size, "source token ids")
        _checks.check_ndim("src", src, (2,))
        lengths = self._lengths(src) if self.pad_id is not None else None
        memory, _ = self.encoder(self.src_embed(src), lengths=lengths)
        return memory

    def _selectors(self, src: Any, memory: Any) -> tuple[Any, Any, Any]:
        """One-hot rows (B, S) picking each source's last real step and its step 0, and the padding mask."""
        B, S = memory.shape[0], memory.shape[1]
        lengths = self._lengths(src) if src is not None else np.full(B, S, np.int64)
        last = (np.arange(S)[None, :] == lengths[:, None] - 1)
        first = np.broadcast_to(np.arange(S)[None, :] == 0, (B, S))
        dtype = backend.dtype_name(memory.dtype)
        with backend.use(backend.backend_of(memory)):
            sel = [backend.asarray(a.astype(dtype)) for a in (last, first)]
            mask = None if self.pad_id is None or src is None else backend.asarray(~(np.arange(S)[None, :] <
                                                                                   lengths[:, None]))
        return sel[0], sel[1], mask

    def _initial_state(self, memory: Any, sel_last: Any, sel_first: Any) -> Any:
        """memory (B, S, 2C) -> the decoder's initial state (L, B, C) (LSTM: (h, c)) through the bridge."""
        xp = get_array_module(memory)
        C, L, B = self.hidden_size, self.num_layers, memory.shape[0]
        z = xp.concat([xp.sum(sel_last[:, :, None] * memory[..., :C], axis=1),  # forward direction's last step
                       xp.sum(sel_first[:, :, None] * memory[..., C:], axis=1)], axis=-1)  # backward's step 0
        h, tctx = ops.tanh_forward(self.bridge(z))
        self.save_for_backward(tctx)
        layers = lambda a: xp.permute_dims(xp.reshape(a, (B, L, C)), (1, 0, 2))  # noqa: E731  (B, L*C) -> (L, B, C)
        return (layers(h), layers(self.bridge_c(z))) if self.bridge_c is not None else layers(h)

    def _initial_state_backward(self, dstate: Any, sel_last: Any, sel_first: Any) -> Any:
        """dL/d(initial state) -> dL/dmemory (B, S, 2C)."""
        xp = get_array_module(sel_last)
        C, L = self.hidden_size, self.num_layers
        flat = lambda a: xp.reshape(xp.permute_dims(a, (1, 0, 2)), (a.shape[1], L * C))  # noqa: E731
        dh = dstate[0] if isinstance(dstate, tuple) else dstate
        dz = self.bridge.backward(ops.tanh_backward(flat(dh), self.saved()))  # forward: h = tanh(W_b z + b_b)
        if self.bridge_c is not None:
            dz = dz + self.bridge_c.backward(flat(dstate[1]))  # forward: c = W_c z + b_c
        # forward: z = [sum_j last_j H_fwd,j ; sum_j first_j H_bwd,j]
        return xp.concat([sel_last[:, :, None] * dz[:, None, :C], sel_first[:, :, None] * dz[:, None, C:]], axis=-1)

    def decode(self, tgt: Any, memory: Any, src: Any = None, cache: RNNDecoderCache | None = None) -> Any:
        """tgt (B, T) ids and memory (B, S, 2C) -> logits (B, T, V_tgt); ``src`` gives the memory's padding.

        ``cache`` (inside ``no_grad``): tgt holds only the new tokens; the decoder continues
        from the state the cache holds (or from the encoder summary when it is empty).
        """
        _checks.check_token_ids("tgt", tgt, self.tgt_vocab_size, "target token ids")
        _checks.check_ndim("tgt", tgt, (2,))
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt and src must have the same batch size, got {tgt.shape[0]} and {memory.shape[0]}")
        if cache is not None and cache.length + tgt.shape[1] > cache.capacity:
            raise ValueError(f"the cache holds at most {cache.capacity} positions; it has {cache.length} and got "
                             f"{tgt.shape[1]} more")
        sel_last, sel_first, mask = self._selectors(src, memory)
        fresh = cache is None or cache.state is None
        state = self._initial_state(memory, sel_last, sel_first) if fresh else cache.state
        x = self.tgt_embed(tgt)
        if self.attention_type == "bahdanau":
            y, state, weights = self._bahdanau_steps(x, memory, mask, state)
        else:
            y, state = self.decoder(x, state)
            weights = None
            if self.attention is not None:
                y, weights = self.attention(y, memory, mask)
        self.save_for_backward((sel_last, sel_first, tgt.shape[1]))
        if cache is not None:
            xp = get_array_module(memory)
            cache.state, cache.length = state, cache.length + tgt.shape[1]
            if weights is not None:
                cache.weights = weights if cache.weights is None else xp.concat([cache.weights, weights], axis=1)
                weights = cache.weights
        self.attn_weights = weights
        return self.generator(self.dropout(y))

    def _bahdanau_steps(self, x: Any, memory: Any, mask: Any, state: Any) -> tuple[Any, Any, Any]:
        """x (B, T, E) -> outputs [s_t; c_t] (B, T, 3C), the last state, weights (B, T, S); step by step."""
        xp = get_array_module(x)
        outs, weights = [], []
        for t in range(x.shape[1]):
            context, w = self.attention(_top(state)[:, None, :], memory, mask)  # c_t from s_{t-1}
            out, state = self.decoder(xp.concat([x[:, t:t + 1, :], context], axis=-1), state)
            outs.append(xp.concat([out, context], axis=-1))
            weights.append(w)
        return xp.concat(outs, axis=1), state, xp.concat(weights, axis=1)

    def forward(self, src: Any, tgt: Any) -> Any:
        """src (B, S), tgt (B, T) ids -> logits (B, T, tgt_vocab_size) (teacher forcing)."""
        return self.decode(tgt, self.encode(src), src)

    def backward(self, dlogits: Any) -> None:
        """dL/dlogits (B, T, V) -> accumulates every parameter's gradient (backpropagation through time)."""
        sel_last, sel_first, T = self.saved()
        dy = self.dropout.backward(self.generator.backward(dlogits))
        if self.attention_type == "bahdanau":
            dx, dmemory, dstate = self._bahdanau_backward(dy, T)
        else:
            dmemory = None
            if self.attention is not None:
                dy, dmemory = self.attention.backward(dy)
            dx, dstate = self.decoder.backward(dy)
        self.tgt_embed.backward(dx)
        dsummary = self._initial_state_backward(dstate, sel_last, sel_first)
        dmemory = dsummary if dmemory is None else dmemory + dsummary
        self.src_embed.backward(self.encoder.backward(dmemory))
        return None

    def _bahdanau_backward(self, dy: Any, T: int) -> tuple[Any, Any, Any]:
        """Reverse of :meth:`_bahdanau_steps`: walks the steps backwards, carrying dL/dstate."""
        xp = get_array_module(dy)
        C, dstate, dmemory = self.hidden_size, None, None
        dxs = [None] * T
        for t in range(T - 1, -1, -1):
            dout, dcontext = dy[:, t:t + 1, :C], dy[:, t:t + 1, C:]  # forward: y_t = [s_t; c_t]
            dinp, dstate = self.decoder.backward(dout, dstate)  # forward: s_t = RNN([x_t; c_t], s_{t-1})
            E = dinp.shape[-1] - 2 * C
            dxs[t] = dinp[..., :E]
            dquery, dmem = self.attention.backward(dcontext + dinp[..., E:])  # forward: c_t = Attn(s_{t-1}, H)
            dmemory = dmem if dmemory is None else dmemory + dmem
            dstate = _add_to_top(dstate, dquery[:, 0, :])
        return xp.concat(dxs, axis=1), dmemory, dstate

    def attention_maps(self) -> dict:
        """{"attention": weights (B, 1, T, S)} of the last forward or decode (empty without attention).

        The layout of :func:`nptransformer.viz.attention_maps` (one head), so
        ``plot_attention(maps["attention"][0, 0])`` draws row 0. After a cached
        decode the map covers every position decoded so far (after beam
        search: one row per hypothesis of the last step).
        """
        if self.attn_weights is None:
            return {}
        return {"attention": self.attn_weights[:, None, ...]}

    def extra_repr(self) -> str:
        return f"cell={self.cell!r}, attention={self.attention_type!r}"


def _check(cell: str, attention: str | None, num_layers: int = 1) -> Any:
    def build(rng: Any) -> ModuleCheck:
        model = RNNSeq2Seq(7, 6, embed_dim=3, hidden_size=3, num_layers=num_layers, cell=cell, attention=attention,
                           attention_size=4, dropout=0.2 if num_layers > 1 else 0.0, pad_id=0, dtype="float64")
        # At initialisation the scores are nearly flat and the attention weights' gradients ~1e-7, where
        # central differences have no relative precision left; tripled weights make them measurable.
        for p in [] if model.attention is None else model.attention.parameters():
            p.data = p.data * 3.0
        src = backend.asarray([[3, 4, 5], [6, 1, 0]], dtype="int64")
        tgt = backend.asarray([[1, 3, 2], [1, 4, 5]], dtype="int64")
        return ModuleCheck(model, (src, tgt), wrt=())

    return build


register_module_check("RNNSeq2Seq.lstm", _check("lstm", None))
register_module_check("RNNSeq2Seq.lstm_bahdanau", _check("lstm", "bahdanau"))
register_module_check("RNNSeq2Seq.gru_bahdanau_2layers", _check("gru", "bahdanau", 2))
register_module_check("RNNSeq2Seq.lstm_luong", _check("lstm", "luong"))
register_module_check("RNNSeq2Seq.gru_luong_2layers", _check("gru", "luong", 2))
