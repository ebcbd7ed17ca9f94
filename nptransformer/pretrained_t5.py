"""Hugging Face T5 checkpoints into nptransformer: :func:`load_t5`.

Reads a directory as ``save_pretrained`` writes it (``config.json`` plus
``model.safetensors`` or ``pytorch_model.bin``), with the same rules as
:func:`~nptransformer.pretrained.load_bert`: the config must describe a model
:class:`~nptransformer.models.T5` builds, every tensor is renamed
(docs/pretrained.md, "T5"), and a missing or unknown tensor is refused by name.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .hub import resolve
from .models.t5 import T5
from .models.t5_layers import parse_feed_forward_proj
from .pretrained import _Table, _drop_tied, _expect, _float_dtype, _gather, _read_config, _read_tensors, _required

_SIZES = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
_OPTIONAL = ("num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance",
             "layer_norm_epsilon", "feed_forward_proj", "pad_token_id", "decoder_start_token_id",
             "initializer_factor")


def load_t5(path: str | os.PathLike, dtype: Any = np.float32) -> T5:
    """A Hugging Face T5 checkpoint (``T5ForConditionalGeneration``) -> :class:`~nptransformer.models.T5`.

    ``path``: a checkpoint directory, or a hub name resolved as
    :func:`~nptransformer.pretrained.load_bert` resolves it (:func:`nptransformer.hub.resolve`).

    Original T5 (ReLU, tied head, outputs scaled by d_model^-1/2) and v1.1 /
    mT5 (``feed_forward_proj="gated-gelu"``, separate ``lm_head``, no scaling)
    both load. The head is tied when the file has no ``lm_head.weight`` (or
    an exact copy of ``shared.weight``); the output scaling follows the
    config's ``scale_decoder_outputs`` when present (transformers 5), else
    ``tie_word_embeddings``, as Hugging Face decides it. ``dtype``: float16,
    float32 or float64. Returned in eval mode.
    """
    path = resolve(path)  # a directory, or a name in the Hugging Face cache
    dtype = _float_dtype(dtype)
    config = _read_config(path)
    _expect(config, path, "model_type", ("t5", "mt5"), "t5")
    _expect(config, path, "is_encoder_decoder", (True,), True)
    parse_feed_forward_proj(config.get("feed_forward_proj", "relu"))
    sizes = {k: _required(config, path, k) for k in _SIZES}
    optional = {k: config[k] for k in _OPTIONAL if config.get(k) is not None}
    tensors = _read_tensors(path)
    for stack in ("encoder", "decoder"):
        _drop_tied(tensors, f"{stack}.embed_tokens.weight", "shared.weight", path)
    if "lm_head.weight" in tensors and np.array_equal(tensors["lm_head.weight"], tensors.get("shared.weight")):
        del tensors["lm_head.weight"]  # a tied head stored twice
    tied = "lm_head.weight" not in tensors
    scale = config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False)
    model = T5(**sizes, **optional, dropout_rate=config.get("dropout_rate", 0.1), tie_word_embeddings=tied,
               scale_decoder_outputs=bool(scale), max_target_positions=config.get("n_positions") or 512, dtype=dtype)
    gated, _ = parse_feed_forward_proj(optional.get("feed_forward_proj", "relu"))
    table = t5_key_table(sizes["num_layers"], model.decoder.num_layers, gated, tied)
    model.load_state_dict(_gather(tensors, table, path))
    return model.eval()


def t5_key_table(num_layers: int, num_decoder_layers: int, gated: bool, tied: bool) -> _Table:
    """nptransformer's T5 keys -> Hugging Face's (no tensor is transposed or concatenated).

    The relative-position table, which Hugging Face keeps in the first
    block's self-attention and shares with the other blocks, belongs to the stack here.
    """
    table: _Table = {"shared.weight": (("shared.weight",), False)}
    ff = {"gate": "wi_0", "linear1": "wi_1", "linear2": "wo"} if gated else {"linear1": "wi", "linear2": "wo"}
    for stack, n in (("encoder", num_layers), ("decoder", num_decoder_layers)):
        table[f"{stack}.relative_attention_bias.weight"] = (
            (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",), False)
        table[f"{stack}.norm.weight"] = ((f"{stack}.final_layer_norm.weight",), False)
        for i in range(n):
            ours, theirs = f"{stack}.layers.{i}", f"{stack}.block.{i}.layer"
            sublayers = [("self_attn", "norm1", f"{theirs}.0", "SelfAttention")]
            if stack == "decoder":
                sublayers.append(("cross_attn", "norm2", f"{theirs}.1", "EncDecAttention"))
            for attn, norm, prefix, name in sublayers:
                for p in "qkvo":
                    table[f"{ours}.{attn}.{p}.weight"] = ((f"{prefix}.{name}.{p}.weight",), False)
                table[f"{ours}.{norm}.weight"] = ((f"{prefix}.layer_norm.weight",), False)
            last = len(sublayers)
            for p, hf in ff.items():
                table[f"{ours}.feed_forward.{p}.weight"] = ((f"{theirs}.{last}.DenseReluDense.{hf}.weight",), False)
            table[f"{ours}.norm{last + 1}.weight"] = ((f"{theirs}.{last}.layer_norm.weight",), False)
    if not tied:
        table["lm_head.weight"] = (("lm_head.weight",), False)
    return table
