"""``BERT``: the bidirectional encoder of Devlin et al. (2019), laid out as Hugging Face's ``BertModel``.

    x = LayerNorm(word[ids] + position[0..T-1] + token_type[types])   # (B, T) -> (B, T, H)
    x = layer(dropout(x), padding mask) for each of L layers          # post-LN, GELU (exact) MLP
    pooled = tanh(x[:, 0] W_p^T + b_p)                                 # pooler: (B, T, H) -> (B, H)
    logits = LayerNorm(gelu(x W_t^T + b_t)) word^T + b                 # MLM head: (B, T, H) -> (B, T, V)

Each layer is an :class:`~nptransformer.nn.TransformerEncoderLayer` with
``norm_first=False`` (the 2017 post-LN arrangement): the same attention and
the same backward as every other model here. ``model(...)`` returns the last
hidden state; the pooler and the masked-language-model head are separate
modules with their own backward, so a fine-tuning step chains them::

    hidden = model(ids, types, mask)            # (B, T, H)
    logits = model.mlm_head(hidden)             # (B, T, V)
    model.backward(model.mlm_head.backward(dlogits))

Hugging Face checkpoints load with :func:`nptransformer.pretrained.load_bert`.

>>> import numpy as np
>>> model = BERT(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
>>> ids = np.array([[2, 5, 7, 3, 0]])
>>> model(ids, attention_mask=np.array([[1, 1, 1, 1, 0]])).shape
(1, 5, 8)
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..kernels.ops import linear_backward, linear_forward, tanh_backward, tanh_forward
from ..nn import init
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.feed_forward import FeedForward
from ..nn.linear import Linear
from ..nn.module import Module, Parameter
from ..nn.normalization import LayerNorm
from ..nn.packing import Packing
from ..nn.transformer import TransformerEncoder
from ..nn.transformer_layers import TransformerEncoderLayer
from ..registry import ModuleCheck, register_module_check
from ._masks import key_padding_from_attention_mask

HIDDEN_ACTS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
"""Hugging Face ``hidden_act`` names BERT accepts -> nptransformer's activation names."""


def _check_hidden(name: str, hidden: Any, size: int) -> None:
    _checks.check_float(name, hidden)
    if hidden.ndim != 3 or hidden.shape[-1] != size:
        raise ValueError(f"{name} must have shape (B, T, {size}), got {tuple(hidden.shape)}")


class BertEmbeddings(Module):
    """ids (B, T), token types (B, T) -> dropout(LayerNorm(word + position + token type)) (B, T, H)."""

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int, type_vocab_size: int,
                 layer_norm_eps: float, dropout: float, pad_token_id: int | None, dtype: Any):
        super().__init__()
        self.word_embeddings = Embedding(vocab_size, hidden_size, padding_idx=pad_token_id, dtype=dtype)
        self.position_embeddings = Embedding(max_position_embeddings, hidden_size, dtype=dtype)
        self.token_type_embeddings = Embedding(type_vocab_size, hidden_size, dtype=dtype)
        self.norm = LayerNorm(hidden_size, eps=layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(dropout)

    def forward(self, input_ids: Any, token_type_ids: Any) -> Any:
        """input_ids (B, T), token_type_ids (B, T) -> (B, T, H)."""
        positions = backend.arange(input_ids.shape[1], like=input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, H) + (T, H)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))

    def backward(self, d: Any) -> None:
        """Adds into the three tables; ids have no gradient."""
        d = self.norm.backward(self.dropout.backward(d))
        self.token_type_embeddings.backward(d)
        self.position_embeddings.backward(get_array_module(d).sum(d, axis=0))  # positions were broadcast over B
        self.word_embeddings.backward(d)
        return None


class BertPooler(Module):
    """pooled = tanh(hidden[:, 0] W^T + b): the first ([CLS]) position, (B, T, H) -> (B, H).

    BERT's next-sentence and sequence-classification heads read this vector.
    """

    def __init__(self, hidden_size: int, dtype: Any = "float32"):
        super().__init__()
        self.dense = Linear(hidden_size, hidden_size, dtype=dtype)

    def forward(self, hidden: Any) -> Any:
        """hidden (B, T, H) -> pooled (B, H)."""
        _check_hidden("hidden", hidden, self.dense.in_features)
        pooled, ctx = tanh_forward(self.dense(hidden[:, 0, :]))
        self.save_for_backward((tuple(hidden.shape), ctx))
        return pooled

    def backward(self, dpooled: Any) -> Any:
        """dL/dpooled (B, H) -> dL/dhidden (B, T, H), zero except at position 0."""
        (B, T, H), ctx = self.saved(dpooled)
        dfirst = self.dense.backward(tanh_backward(dpooled, ctx))  # (B, H)
        xp = get_array_module(dfirst)
        rest = backend.zeros((B, T - 1, H), like=dfirst)  # forward read only hidden[:, 0]
        return xp.concat([xp.expand_dims(dfirst, axis=1), rest], axis=1)


class BertMLMHead(Module):
    """Masked-language-model logits: LayerNorm(act(hidden W^T + b)) word^T + bias, (B, T, H) -> (B, T, V).

    The decoder is the word-embedding table itself (``decoder`` is that
    :class:`~nptransformer.nn.Embedding`), so the table is listed once, under
    the model's ``embeddings.word_embeddings``, and its gradient collects
    both the lookup's part and the head's part. ``bias`` (V,) is the head's own.
    """

    def __init__(self, word_embeddings: Embedding, hidden_act: str = "gelu", layer_norm_eps: float = 1e-12,
                 dtype: Any = "float32"):
        super().__init__()
        H, V = word_embeddings.embedding_dim, word_embeddings.num_embeddings
        self.dense = Linear(H, H, dtype=dtype)
        self.hidden_act = _activation(hidden_act)
        self.norm = LayerNorm(H, eps=layer_norm_eps, dtype=dtype)
        self.decoder = word_embeddings
        self.bias = Parameter(backend.zeros((V,), dtype=dtype))

    def forward(self, hidden: Any) -> Any:
        """hidden (B, T, H) -> logits (B, T, V)."""
        _check_hidden("hidden", hidden, self.dense.in_features)
        x = self.norm(self.dense(hidden, activation=self.hidden_act))  # LayerNorm(act(hidden W^T + b))
        logits, ctx = linear_forward(x, self.decoder.weight.data, self.bias.data)  # (B, T, H) @ (H, V) + (V,)
        self.save_for_backward(ctx)
        return logits

    def backward(self, dlogits: Any) -> Any:
        """dL/dlogits (B, T, V) -> dL/dhidden (B, T, H); adds into the tied table, the bias and the transform."""
        dx, dtable, dbias = linear_backward(dlogits, self.saved(dlogits))
        self.decoder.weight.accumulate(dtable)
        self.bias.accumulate(dbias)
        return self.dense.backward(self.norm.backward(dx))


def _activation(hidden_act: str) -> str:
    if hidden_act not in HIDDEN_ACTS:
        raise ValueError(f"hidden_act must be one of {sorted(HIDDEN_ACTS)}, got {hidden_act!r}")
    return HIDDEN_ACTS[hidden_act]


class BERT(Module):
    """Encoder-only Transformer: ``model(input_ids, token_type_ids=None, attention_mask=None)`` -> (B, T, H).

    Arguments carry the names of Hugging Face's ``BertConfig``, so a
    ``config.json`` maps onto them one to one. ``hidden_dropout_prob`` is
    applied after the embeddings and after each sublayer;
    ``attention_probs_dropout_prob`` to the attention probabilities (as in
    BERT, there is no dropout between the two feed-forward linears).
    ``add_pooling_layer`` adds ``pooler`` (:class:`BertPooler`),
    ``add_mlm_head`` adds ``mlm_head`` (:class:`BertMLMHead`). The word
    table's ``pad_token_id`` row starts at zero and gets no gradient from
    the lookup (as ``padding_idx`` in PyTorch; the tied MLM decoder still
    trains it).
    Initialised as BERT: N(0, initializer_range) weights, zero biases, unit
    LayerNorm gains.

    Submodules: ``embeddings`` (``word_embeddings``, ``position_embeddings``,
    ``token_type_embeddings``, ``norm``), ``encoder.layers.i`` (torch's
    TransformerEncoderLayer keys), ``pooler.dense``, ``mlm_head.dense``,
    ``mlm_head.norm``, ``mlm_head.bias``.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, intermediate_size: int = 3072, hidden_act: str = "gelu",
                 hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2, layer_norm_eps: float = 1e-12,
                 pad_token_id: int | None = 0, initializer_range: float = 0.02, add_pooling_layer: bool = True,
                 add_mlm_head: bool = False, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size),
                            ("num_hidden_layers", num_hidden_layers), ("type_vocab_size", type_vocab_size),
                            ("max_position_embeddings", max_position_embeddings)):
            _checks.check_positive_int(name, value)
        _checks.check_probability("attention_probs_dropout_prob", attention_probs_dropout_prob)
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.max_position_embeddings = num_attention_heads, max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position_embeddings, type_vocab_size,
                                         layer_norm_eps, hidden_dropout_prob, pad_token_id, dtype)
        act = _activation(hidden_act)
        layer = TransformerEncoderLayer(
            hidden_size, num_attention_heads, intermediate_size, hidden_dropout_prob, layer_norm_eps=layer_norm_eps,
            norm_first=False, dtype=dtype, attn_dropout=attention_probs_dropout_prob,  # a rate of its own in BERT
            # BERT's intermediate -> output path has no dropout
            feed_forward=lambda d: FeedForward(d, intermediate_size, dropout=0.0, activation=act, dtype=dtype))
        self.encoder = TransformerEncoder(layer, num_hidden_layers)
        self.pooler = BertPooler(hidden_size, dtype=dtype) if add_pooling_layer else None
        self.mlm_head = (BertMLMHead(self.embeddings.word_embeddings, hidden_act, layer_norm_eps, dtype=dtype)
                         if add_mlm_head else None)
        self._init_weights(initializer_range, generator)
        self._packing: Packing | None = None  # the last forward's, when it ran packed

    def _init_weights(self, std: float, generator: Any) -> None:
        for name, p in self.named_parameters():
            if len(p.shape) > 1:
                init.normal_(p, 0.0, std, generator=generator)
            elif name.endswith("bias"):
                init.zeros_(p)
        words = self.embeddings.word_embeddings
        if words.padding_idx is not None:
            words.weight.data[words.padding_idx, :] = 0.0

    def forward(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None,
                packed: bool = False) -> Any:
        """Last hidden state (B, T, H) of token ids (B, T).

        ``token_type_ids`` (B, T): segment A = 0, B = 1 (default all 0).
        ``attention_mask`` (B, T): 1 = a real token, 0 = padding, as Hugging
        Face's (bool or integer); padded keys get no attention. Padded
        positions still get a hidden state (ignore it, as
        :func:`~nptransformer.pretrained.mean_pool` does). ``packed``: the
        layers run on the real tokens only (:mod:`nptransformer.nn.packing`):
        the same hidden states at real positions, zeros at padded ones, and
        only the real tokens' work (``backward`` follows the same path).
        """
        _checks.check_token_ids("input_ids", input_ids, self.vocab_size, "token ids")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {self.max_position_embeddings}; "
                             "truncate the input")
        xp = get_array_module(input_ids)
        if token_type_ids is None:
            token_type_ids = xp.zeros_like(input_ids)
        else:
            _checks.check_token_ids("token_type_ids", token_type_ids, self.type_vocab_size, "segment ids")
            if tuple(token_type_ids.shape) != tuple(input_ids.shape):
                raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(token_type_ids.shape)}")
        x = self.embeddings(input_ids, token_type_ids)
        padding = key_padding_from_attention_mask(attention_mask, tuple(input_ids.shape), "input_ids.shape")
        self._packing = None
        if not packed:
            return self.encoder(x, src_key_padding_mask=padding)
        real = xp.ones(tuple(input_ids.shape), dtype=xp.bool) if padding is None else ~padding
        self._packing = Packing(real)
        return self._packing.unpack(self.encoder(self._packing.pack(x), packing=self._packing))

    def backward(self, dhidden: Any) -> None:
        """dL/dhidden (B, T, H) -> accumulates the gradient of every parameter the forward used.

        The heads have their own backward: pass ``mlm_head.backward(dlogits)``
        or ``pooler.backward(dpooled)`` (or their sum) here.
        """
        if self._packing is None:
            self.embeddings.backward(self.encoder.backward(dhidden))
        else:  # forward: hidden = unpack(encoder(pack(x)))
            self.embeddings.backward(self._packing.unpack(self.encoder.backward(self._packing.pack(dhidden))))
        return None

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable scalars (the MLM decoder is the word table, counted once); ``non_embedding`` leaves
        out the word, position and token-type tables.

        Closed form: L (4H^2 + 4H + 2HI + I + H + 4H) for the layers (I = intermediate_size),
        (V + P + N_types) H + 2H for the embeddings, H^2 + H for the pooler, H^2 + 3H + V for the MLM head.
        """
        n = super().num_parameters()
        if non_embedding:
            e = self.embeddings
            n -= e.word_embeddings.weight.size + e.position_embeddings.weight.size + e.token_type_embeddings.weight.size
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for sequences of ``seq_len`` (default max_position_embeddings).

        6 N for the weight GEMMs, N = the encoder layers' parameters plus,
        with the MLM head, its transform, bias and V x H decoder; plus
        12 L T H for the attention products QK^T and PV (every query sees all
        T keys). The pooler runs once a sequence, not once a token, and is
        left out (the accounting of the PaLM paper's appendix B, as
        :meth:`GPT.flops_per_token`).
        """
        T = self.max_position_embeddings if seq_len is None else seq_len
        _checks.check_positive_int("seq_len", T)
        n_matmul = self.encoder.num_parameters()
        if self.mlm_head is not None:
            n_matmul += self.mlm_head.num_parameters()
        return 6 * n_matmul + 12 * self.num_hidden_layers * T * self.hidden_size

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, "
                f"num_hidden_layers={self.num_hidden_layers}, num_attention_heads={self.num_attention_heads}")


class BERTWithHead(Module):
    """``head(bert(*inputs))`` as one module with one backward, e.g. masked-LM training or a gradient check.

    ``head`` is one of the model's own heads (``bert.mlm_head``: hidden
    (B, T, H) -> logits (B, T, V); ``bert.pooler``: -> (B, H)). ``forward``
    takes BERT's inputs; ``backward(d)`` runs the head's backward, then
    BERT's, accumulating every parameter's gradient (ids have none).
    """

    def __init__(self, bert: BERT, head: Module):
        super().__init__()
        if head is None:
            raise ValueError("head is None: build BERT with add_mlm_head=True / add_pooling_layer=True")
        self.bert, self.head = bert, head

    def forward(self, *inputs: Any) -> Any:
        """BERT's inputs (input_ids (B, T), token_type_ids, attention_mask) -> the head's output."""
        return self.head(self.bert(*inputs))

    def backward(self, d: Any) -> None:
        """d = dL/d(head output) -> None; parameter gradients are accumulated."""
        self.bert.backward(self.head.backward(d))


def _check(head: str) -> Any:
    def build(rng: Any) -> ModuleCheck:
        # The MLM check is BERT as published (2 layers, exact GELU); the pooler and packed ones take 1 layer and
        # the tanh GELU, because the exact GELU's erf is slow under the strict backend (no native erf there).
        mlm = head == "mlm"
        bert = BERT(vocab_size=9, hidden_size=4, num_hidden_layers=2 if mlm else 1, num_attention_heads=2,
                    intermediate_size=6, hidden_act="gelu" if mlm else "gelu_new", max_position_embeddings=6,
                    initializer_range=0.5, add_pooling_layer=head == "pooler", add_mlm_head=mlm, dtype="float64")
        # ids avoid pad_token_id 0: its row is frozen by convention, which finite differences do not know
        ids = backend.asarray(rng.integers(1, 9, size=(2, 5)))
        types = backend.asarray([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]], dtype="int64")
        mask = backend.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype="int64")
        if head == "packed":  # the hidden states, the layers run on the 8 real tokens only
            return ModuleCheck(bert, (ids, types, mask), kwargs={"packed": True}, wrt=())
        return ModuleCheck(BERTWithHead(bert, bert.mlm_head if mlm else bert.pooler), (ids, types, mask), wrt=())

    return build


register_module_check("BERT.mlm", _check("mlm"))
register_module_check("BERT.pooler", _check("pooler"))
register_module_check("BERT.packed", _check("packed"))
