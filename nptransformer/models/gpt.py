"""``GPT``: a decoder-only Transformer in GPT-2's shape.

    x = wte[idx] + wpe[0..T-1]                      # (B, T) -> (B, T, C)
    x = block(x) for each of n_layer blocks         # pre-LN, causal self-attention, GELU (tanh) MLP
    logits = ln_f(x) @ wte^T                        # (B, T, C) -> (B, T, V), head tied to wte

Each block is an :class:`~nptransformer.nn.TransformerEncoderLayer` with
``norm_first=True`` and ``is_causal=True``: the same layer (and the same
backward) as the encoder-decoder, so its state_dict keys are torch's.

>>> import numpy as np
>>> model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=16)
>>> model(np.array([[1, 2, 3]])).shape
(1, 3, 11)
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..functional.linear import linear_backward, linear_forward
from ..nn import init
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from ..nn.module import Module, ModuleList
from ..nn.normalization import LayerNorm
from ..nn.transformer_layers import TransformerEncoderLayer


class GPT(Module):
    """Decoder-only language model. ``model(idx)``: idx (B, T) int -> logits (B, T, vocab_size).

    Parameters: ``wte`` (V, C) token and ``wpe`` (block_size, C) position
    embeddings, ``blocks.i`` pre-LN layers (MLP width 4C), ``ln_f``, and
    ``lm_head`` (V, C) when ``tie_weights=False`` (else the head is ``wte``).
    Initialised as GPT-2: N(0, 0.02), residual output projections
    N(0, 0.02 / sqrt(2 n_layer)), zero biases.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int,
                 dropout: float = 0.0, bias: bool = True, tie_weights: bool = True, dtype: Any = "float32",
                 generator: Any = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                            ("n_head", n_head), ("d_model", d_model)):
            _checks.check_positive_int(name, value)
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.n_head, self.d_model, self.tie_weights = n_head, d_model, tie_weights
        self.wte = Embedding(vocab_size, d_model, dtype=dtype)
        self.wpe = Embedding(block_size, d_model, dtype=dtype)
        self.drop = Dropout(dropout)
        self.blocks = ModuleList([
            TransformerEncoderLayer(d_model, n_head, 4 * d_model, dropout, activation="gelu_tanh",
                                    norm_first=True, bias=bias, dtype=dtype)
            for _ in range(n_layer)
        ])
        self.ln_f = LayerNorm(d_model, bias=bias, dtype=dtype)
        self.lm_head = None if tie_weights else Linear(d_model, vocab_size, bias=False, dtype=dtype)
        self._init_weights(generator)

    def _init_weights(self, generator: Any) -> None:
        residual_std = init.scaled_residual_std(self.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "linear2.weight")):
                init.normal_(p, 0.0, residual_std, generator=generator)
            elif len(p.shape) > 1:
                init.normal_(p, 0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                init.zeros_(p)

    def _head_weight(self) -> Any:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, idx: Any) -> Any:
        """idx (B, T) integer token ids, T <= block_size -> logits (B, T, vocab_size)."""
        _checks.check_int("idx", idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}; crop idx to the last "
                             f"{self.block_size} tokens")
        pos = backend.arange(T, like=idx)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x, is_causal=True)
        x = self.ln_f(x)
        logits, ctx = linear_forward(x, self._head_weight().data)  # (B, T, C) @ (C, V)
        self.save_for_backward(ctx)
        return logits

    def backward(self, dlogits: Any) -> None:
        """dL/dlogits (B, T, V) -> accumulates every parameter's gradient (token ids have none)."""
        dx, dhead, _ = linear_backward(dlogits, self.saved())
        self._head_weight().accumulate(dhead)  # tied: wte.grad gets the head's part and the lookup's part
        dx = self.ln_f.backward(dx)
        for block in reversed(list(self.blocks)):
            dx = block.backward(dx)
        dx = self.drop.backward(dx)
        xp = get_array_module(dx)
        self.wpe.backward(xp.sum(dx, axis=0))  # positions were broadcast over the batch
        self.wte.backward(dx)
        return None

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable scalars (tied head counted once); ``non_embedding`` leaves out wte and wpe.

        Closed form: 12 L C^2 + 13 L C (blocks) + 2C (ln_f) + V C + block_size C.
        """
        n = super().num_parameters()
        return n - self.wte.weight.size - self.wpe.weight.size if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for sequences of ``seq_len`` (default block_size).

        6 N for the weight GEMMs (N = non-embedding parameters + the V x C
        head; 2 FLOPs per multiply-add, and backward costs twice forward)
        plus 12 L T C for the attention products QK^T and PV (2 T C FLOPs
        each per token forward, x3 with backward; causal masking not
        subtracted), the accounting of the PaLM paper's appendix B.
        """
        T = self.block_size if seq_len is None else seq_len
        n_matmul = self.num_parameters(non_embedding=True) + self.vocab_size * self.d_model
        return 6 * n_matmul + 12 * self.n_layer * T * self.d_model

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, block_size={self.block_size}, n_layer={self.n_layer}, "
                f"n_head={self.n_head}, d_model={self.d_model}")
