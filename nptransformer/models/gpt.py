"""``GPT``: a decoder-only Transformer in GPT-2's shape.

    x = wte[idx] + wpe[0..T-1]                      # (B, T) -> (B, T, C)
    x = block(x) for each of n_layer blocks         # pre-LN, causal self-attention, GELU (tanh) MLP
    logits = ln_f(x) @ wte^T                        # (B, T, C) -> (B, T, V), head tied to wte

Each block is an :class:`~nptransformer.nn.TransformerEncoderLayer` with
``norm_first=True`` and ``is_causal=True``: the same layer (and the same
backward) as the encoder-decoder, so its state_dict keys are torch's.

Variants (docs/positions.md): ``positional="sinusoidal"`` (a fixed table
instead of ``wpe``), ``"rotary"``, ``"alibi"`` or ``"relative"`` (T5's
causal buckets, one table per block) in every block's attention instead of
``wpe``; ``n_kv_head`` < ``n_head`` makes it grouped-query attention
(:class:`~nptransformer.nn.GroupedQueryAttention`), whose KV cache is
n_head / n_kv_head times smaller. The defaults build GPT-2 exactly.

Inference: ``forward`` takes a ``KVCache`` (incremental decoding), an
``attention_mask`` and ``position_ids`` (left-padded batches) and
``need_weights`` (attention maps); :meth:`GPT.generate` decodes
(docs/generation.md).

>>> import numpy as np
>>> model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=16)
>>> model(np.array([[1, 2, 3]])).shape
(1, 3, 11)
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..functional.positional import sinusoidal_table
from ..kernels.ops import linear_backward, linear_forward
from ..nn import init
from ..nn.checkpoint import checkpoint_backward, checkpoint_forward
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.efficient_attention import EfficientSelfAttention
from ..nn.grouped_attention import GroupedQueryAttention
from ..nn.kv_cache import KVCache
from ..nn.linear import Linear
from ..nn.mixture_of_experts import MixtureOfExperts
from ..nn.module import Module, ModuleList
from ..nn.normalization import LayerNorm
from ..nn.transformer_layers import TransformerEncoderLayer
from ..registry import ModuleCheck, register_module_check
from . import gpt_decode
from ._masks import key_padding_from_attention_mask

POSITIONALS = ("learned", "sinusoidal", "rotary", "alibi", "relative")


class GPT(Module):
    """Decoder-only language model. ``model(idx)``: idx (B, T) int -> logits (B, T, vocab_size).

    Parameters: ``wte`` (V, C) token and ``wpe`` (block_size, C) position
    embeddings, ``blocks.i`` pre-LN layers (MLP width 4C), ``ln_f``, and
    ``lm_head`` (V, C) when ``tie_weights=False`` (else the head is ``wte``).
    Initialised as GPT-2: N(0, 0.02), residual output projections
    N(0, 0.02 / sqrt(2 n_layer)), zero biases.

    ``positional``: "learned" (``wpe``, GPT-2), "sinusoidal", "rotary",
    "alibi" or "relative"; ``n_kv_head``: key/value heads per block
    (dividing n_head; None = n_head, multi-head attention). ``feed_forward``:
    None (the 4C GELU MLP) or d_model -> a Module used as every block's
    feed-forward, e.g. ``lambda d: MixtureOfExperts(d, 4 * d, num_experts=8)``
    (whose load-balancing loss enters training through its backward:
    :func:`~nptransformer.nn.load_balancing_loss`).

    ``attention``: None (softmax attention; run tiled, in O(T) memory, for
    long rows by the dispatch) or the options of an
    :class:`~nptransformer.nn.EfficientSelfAttention` put in every block,
    e.g. ``{"kind": "sliding_window", "window": 256}`` or ``{"kind":
    "linear", "feature_map": "favor"}`` (docs/long-sequences.md); with
    learned or sinusoidal positions, n_kv_head = n_head, generation without cache.

    ``checkpoint_activations``: True, or the indices of the blocks whose
    activations are recomputed in backward instead of kept (less memory,
    about a third more compute per such block; :mod:`nptransformer.nn.checkpoint`).
    An attribute too: set it on a built model.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int,
                 dropout: float = 0.0, bias: bool = True, tie_weights: bool = True, dtype: Any = "float32",
                 generator: Any = None, checkpoint_activations: Any = False, positional: str = "learned",
                 n_kv_head: int | None = None, feed_forward: Any = None, attention: dict | None = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                            ("n_head", n_head), ("d_model", d_model)):
            _checks.check_positive_int(name, value)
        if positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {positional!r}")
        if n_kv_head is not None and (isinstance(n_kv_head, bool) or not isinstance(n_kv_head, int) or n_kv_head < 1
                                      or n_head % n_kv_head):
            raise ValueError(f"n_kv_head must be None or a positive divisor of n_head={n_head}, got {n_kv_head!r}")
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.n_head, self.d_model, self.tie_weights = n_head, d_model, tie_weights
        self.positional, self.n_kv_head = positional, n_head if n_kv_head is None else n_kv_head
        self.wte = Embedding(vocab_size, d_model, dtype=dtype)
        self.wpe = Embedding(block_size, d_model, dtype=dtype) if positional == "learned" else None
        if positional == "sinusoidal":
            self.register_buffer("position_table", sinusoidal_table(block_size, d_model, dtype=dtype), persistent=False)
        self.drop = Dropout(dropout)
        self.blocks = ModuleList([
            TransformerEncoderLayer(d_model, n_head, 4 * d_model, dropout, activation="gelu_tanh",
                                    norm_first=True, bias=bias, dtype=dtype, feed_forward=feed_forward)
            for _ in range(n_layer)
        ])
        if positional in ("rotary", "alibi", "relative") or self.n_kv_head != n_head:
            for block in self.blocks:  # the same layer, with the variant attention in place of MultiheadAttention
                block.self_attn = GroupedQueryAttention(
                    d_model, n_head, self.n_kv_head, dropout, bias,
                    position=positional if positional in ("rotary", "alibi", "relative") else None, dtype=dtype)
        if attention is not None:
            if (not isinstance(attention, dict) or positional not in ("learned", "sinusoidal")
                    or self.n_kv_head != n_head):
                raise ValueError(f"attention must be None or a dict of EfficientSelfAttention options, with learned or "
                                 f"sinusoidal positions and n_kv_head = n_head; got {attention!r}, "
                                 f"positional={positional!r}, n_kv_head={n_kv_head!r}")
            for block in self.blocks:
                block.self_attn = EfficientSelfAttention(d_model, n_head, bias=bias, dtype=dtype, generator=generator,
                                                        **attention)
        self.ln_f = LayerNorm(d_model, bias=bias, dtype=dtype)
        self.lm_head = None if tie_weights else Linear(d_model, vocab_size, bias=False, dtype=dtype)
        self._init_weights(generator)
        self.checkpoint_activations = checkpoint_activations

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

    def forward(self, idx: Any, attention_mask: Any = None, position_ids: Any = None, cache: Any = None,
                need_weights: bool = False) -> Any:
        """idx (B, T) integer token ids, T <= block_size -> logits (B, T, vocab_size).

        With P = ``cache.length`` positions already cached (P = 0 without a cache):

        - ``attention_mask`` (B, P + T), int or bool: 1/True for a real token,
          0/False for padding, as in Hugging Face; padded keys are never attended.
        - ``position_ids`` (B, T) int: each token's position (default
          P, ..., P + T - 1). Left-padded prompts count positions from their
          first real token, so padding does not change a row's logits.
          Read by learned and sinusoidal positions; rotary, ALiBi and
          relative positions depend on distances only, which a row's shift
          leaves unchanged.
        - ``cache``: a :class:`~nptransformer.generation.KVCache` with n_layer
          layers, used inside ``no_grad``; idx holds only the new tokens.
        - ``need_weights``: each ``blocks[i].self_attn.attn_weights`` keeps
          its (B, H, T, P + T) attention probabilities.
        """
        _checks.check_token_ids("idx", idx, self.vocab_size, "token ids")
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx must have shape (B, T) with T >= 1 tokens, got {tuple(idx.shape)}")
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.block_size:
            if cache is None:
                raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}; crop idx to the last "
                                 f"{self.block_size} tokens")
            raise ValueError(f"the cache holds {start} positions and idx adds {T}: {start + T} exceeds block_size "
                             f"{self.block_size}")
        if cache is not None and len(cache.layers) != self.n_layer:
            raise ValueError(f"cache has {len(cache.layers)} layers, the model has n_layer={self.n_layer}")
        if position_ids is None:
            pos = backend.arange(T, like=idx) + start  # (T,), broadcast over the batch
        else:
            _checks.check_int("position_ids", position_ids)
            if tuple(position_ids.shape) != (B, T):
                raise ValueError(f"position_ids must have shape (B, T) = {(B, T)}, got {tuple(position_ids.shape)}")
            _checks.check_token_ids("position_ids", position_ids, self.block_size, "positions")
            pos = position_ids
        padding = key_padding_from_attention_mask(attention_mask, (B, start + T), "(B, cached + new positions)")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(pos)  # (B, T, C) + (T, C) or (B, T, C)
        elif self.positional == "sinusoidal":
            x = x + get_array_module(x).take(self.position_table, pos, axis=0)  # a constant: no gradient
        # rotary, alibi, relative: positions enter each block's attention, as distances j - i only, so a
        # row's constant shift of position_ids (left padding) changes nothing there
        x = self.drop(x)
        checkpoints = []  # per block: None, or what checkpoint_backward needs
        for i, block in enumerate(self.blocks):
            kwargs = dict(src_key_padding_mask=padding, is_causal=True, need_weights=need_weights,
                          cache=None if cache is None else cache.layers[i])
            if self._checkpointed(i) and is_grad_enabled():
                x, c = checkpoint_forward(block, x, **kwargs)  # keeps x only
            else:
                x, c = block(x, **kwargs), None
            checkpoints.append(c)
        x = self.ln_f(x)
        logits, ctx = linear_forward(x, self._head_weight().data)  # (B, T, C) @ (C, V)
        self.save_for_backward((ctx, position_ids is not None, checkpoints))
        return logits

    def generate(self, idx: Any, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 seed: int | None = None, attention_mask: Any = None, crop: bool = False) -> Any:
        """Continue prompts idx (B, T) by ``max_new_tokens`` tokens -> (B, T + max_new_tokens).

        Greedy by default; ``do_sample`` samples with ``temperature``,
        ``top_k`` and ``top_p`` (nucleus). ``attention_mask`` (B, T) marks
        left padding (0) in batched prompts of different lengths. A prompt
        that cannot fit block_size is refused unless ``crop=True`` (a sliding
        window of the last block_size tokens). See
        :func:`nptransformer.generation.generate` and docs/generation.md.
        """
        from ..generation.decoder_only import generate  # generation sits above models: imported when used

        return generate(self, idx, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                        top_p=top_p, use_cache=use_cache, seed=seed, attention_mask=attention_mask, crop=crop)

    # -- the decoding interface (nptransformer.generation.interface) --------------
    @property
    def max_positions(self) -> int:
        """The longest sequence the model sees: ``block_size``."""
        return self.block_size

    def new_cache(self, capacity: int) -> KVCache:
        """An empty KVCache of n_layer layers with room for ``capacity`` positions."""
        return KVCache(self.n_layer, capacity)

    def decode(self, ids: Any, cache: Any = None, attention_mask: Any = None, position_ids: Any = None) -> Any:
        """ids (B, T_new) -> logits (B, T_new, V), extending ``cache``: one decoding step (:meth:`forward`).

        A one-token step of a standard GPT is computed straight from the
        weights (:mod:`nptransformer.models.gpt_decode`: the same values,
        without the layers' per-op work); anything else runs :meth:`forward`.
        """
        if gpt_decode.takes(self, ids, cache, attention_mask, position_ids):
            return gpt_decode.step(self, ids, cache)
        return self.forward(ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)

    def backward(self, dlogits: Any) -> None:
        """dL/dlogits (B, T, V) -> accumulates every parameter's gradient (token ids have none)."""
        ctx, per_row_positions, checkpoints = self.saved(dlogits)
        dx, dhead, _ = linear_backward(dlogits, ctx)
        self._head_weight().accumulate(dhead)  # tied: wte.grad gets the head's part and the lookup's part
        dx = self.ln_f.backward(dx)
        for block, c in zip(reversed(list(self.blocks)), reversed(checkpoints)):
            dx = block.backward(dx) if c is None else checkpoint_backward(dx, c)
        dx = self.drop.backward(dx)
        xp = get_array_module(dx)
        if self.wpe is not None:
            self.wpe.backward(dx if per_row_positions else xp.sum(dx, axis=0))  # default positions were broadcast over B
        self.wte.backward(dx)
        return None

    def _checkpointed(self, i: int) -> bool:
        flag = self.checkpoint_activations
        return bool(flag) if isinstance(flag, bool) else i in flag

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable scalars (tied head counted once); ``non_embedding`` leaves out wte and wpe.

        Closed form: 12 L C^2 + 13 L C (blocks) + 2C (ln_f) + V C + block_size C (the last term with
        learned positions, the default; grouped-query attention and relative positions change the blocks' part).
        """
        n = super().num_parameters()
        embedding = self.wte.weight.size + (self.wpe.weight.size if self.wpe is not None else 0)
        return n - embedding if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for sequences of ``seq_len`` (default block_size).

        6 N for the weight GEMMs (N = non-embedding parameters + the V x C
        head; 2 FLOPs per multiply-add, and backward costs twice forward)
        plus 12 L T C for the attention products QK^T and PV (2 T C FLOPs
        each per token forward, x3 with backward; causal masking not
        subtracted), the accounting of the PaLM paper's appendix B. With
        :class:`~nptransformer.nn.MixtureOfExperts` feed-forwards N counts
        every expert; a token's cost counts only its top_k
        (``num_active_parameters``).
        """
        T = self.block_size if seq_len is None else seq_len
        n_matmul = self.num_parameters(non_embedding=True) + self.vocab_size * self.d_model
        return 6 * n_matmul + 12 * self.n_layer * T * self.d_model

    def extra_repr(self) -> str:
        variants = "" if self.positional == "learned" else f", positional={self.positional!r}"
        variants += f", n_kv_head={self.n_kv_head}" if self.n_kv_head != self.n_head else ""
        return (f"vocab_size={self.vocab_size}, block_size={self.block_size}, n_layer={self.n_layer}, "
                f"n_head={self.n_head}, d_model={self.d_model}{variants}")


def _check(tie_weights: bool, positional: str = "learned", n_head: int = 2, n_kv_head: int | None = None) -> Any:
    def build(rng: Any) -> ModuleCheck:
        model = GPT(vocab_size=7, block_size=6, n_layer=2, n_head=n_head, d_model=8 if n_head > 2 else 4,
                    dropout=0.1, tie_weights=tie_weights, dtype="float64", positional=positional, n_kv_head=n_kv_head)
        return ModuleCheck(model, (backend.asarray(rng.integers(0, 7, size=(2, 5))),), wrt=())

    return build


register_module_check("GPT.tied", _check(True))
register_module_check("GPT.untied", _check(False))
register_module_check("GPT.rotary", _check(True, "rotary"))
register_module_check("GPT.alibi", _check(True, "alibi"))
register_module_check("GPT.sinusoidal", _check(True, "sinusoidal"))
register_module_check("GPT.relative", _check(True, "relative"))
register_module_check("GPT.gqa", _check(True, "learned", n_head=4, n_kv_head=2))
register_module_check("GPT.mqa_rotary", _check(False, "rotary", n_head=4, n_kv_head=1))


def _check_attention(attention: dict) -> Any:
    def build(rng: Any) -> ModuleCheck:
        model = GPT(vocab_size=7, block_size=6, n_layer=1, n_head=2, d_model=4, dtype="float64", attention=attention,
                    generator=backend.Generator(0))
        return ModuleCheck(model, (backend.asarray(rng.integers(0, 7, size=(2, 5))),), wrt=())

    return build


register_module_check("GPT.sliding_window",
                      _check_attention({"kind": "sliding_window", "window": 1, "global_tokens": 1}))
register_module_check("GPT.linear_favor",
                      _check_attention({"kind": "linear", "feature_map": "favor", "num_features": 4}))


def _check_moe(rng: Any) -> ModuleCheck:
    model = GPT(vocab_size=7, block_size=6, n_layer=1, n_head=2, d_model=4, dtype="float64",
                feed_forward=lambda d: MixtureOfExperts(d, 6, num_experts=3, top_k=2, aux_loss_weight=0.0,
                                                        dtype="float64"))
    for name, p in model.named_parameters():
        if name.endswith("router.weight"):
            p.data = backend.asarray(rng.normal(size=p.shape))  # O(1) router logits: no near-ties to flip
    return ModuleCheck(model, (backend.asarray(rng.integers(0, 7, size=(2, 4))),), wrt=())


register_module_check("GPT.moe", _check_moe)
