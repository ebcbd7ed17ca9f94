"""Tiny float64 instances of every model, registered for the gradient check."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..registry import ModuleCheck, register_module_check


def _gpt(rng: Any, tie_weights: bool) -> ModuleCheck:
    from .gpt import GPT

    model = GPT(vocab_size=7, block_size=6, n_layer=2, n_head=2, d_model=4, dropout=0.1, tie_weights=tie_weights,
                dtype="float64")
    return ModuleCheck(model, (backend.asarray(rng.integers(0, 7, size=(2, 5))),), wrt=())


def _seq2seq(rng: Any, positional: str, share: bool) -> ModuleCheck:
    from .seq2seq import Seq2SeqTransformer

    model = Seq2SeqTransformer(6, 6, d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=6, dropout=0.0, max_len=8, positional=positional,
                               share_embeddings=share, tie_output=share, pad_id=0, dtype="float64")
    src = np.array([[1, 2, 3, 4], [5, 1, 0, 0]])
    tgt = np.array([[1, 3, 2], [4, 0, 0]])
    return ModuleCheck(model, (backend.asarray(src), backend.asarray(tgt)), wrt=())


def _bert(rng: Any, head: str) -> ModuleCheck:
    from .bert import BERT, BERTWithHead

    # The MLM check is BERT as published (2 layers, exact GELU); the pooler one takes 1 layer and the tanh
    # GELU, because the exact GELU's erf is slow under the strict backend (no native erf there).
    mlm = head == "mlm"
    bert = BERT(vocab_size=9, hidden_size=4, num_hidden_layers=2 if mlm else 1, num_attention_heads=2,
                intermediate_size=6, hidden_act="gelu" if mlm else "gelu_new", max_position_embeddings=6,
                initializer_range=0.5, add_pooling_layer=not mlm, add_mlm_head=mlm, dtype="float64")
    # ids avoid pad_token_id 0: its row is frozen by convention, which finite differences do not know
    ids = rng.integers(1, 9, size=(2, 5))
    types = np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    inputs = tuple(backend.asarray(a) for a in (ids, types, mask))
    return ModuleCheck(BERTWithHead(bert, bert.mlm_head if mlm else bert.pooler), inputs, wrt=())


register_module_check("GPT.tied", lambda rng: _gpt(rng, True))
register_module_check("GPT.untied", lambda rng: _gpt(rng, False))
register_module_check("Seq2Seq.sinusoidal", lambda rng: _seq2seq(rng, "sinusoidal", False))
register_module_check("Seq2Seq.learned_shared", lambda rng: _seq2seq(rng, "learned", True))
register_module_check("BERT.mlm", lambda rng: _bert(rng, "mlm"))
register_module_check("BERT.pooler", lambda rng: _bert(rng, "pooler"))
