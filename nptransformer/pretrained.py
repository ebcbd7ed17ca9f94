"""Hugging Face checkpoints into nptransformer: :func:`load_bert`, :func:`load_gpt2`, :func:`mean_pool`.

A checkpoint is a local directory as ``save_pretrained`` writes it, or a
hub name found in the Hugging Face cache (:func:`nptransformer.hub.resolve`):
``config.json`` plus ``model.safetensors`` (read by
:mod:`nptransformer.safetensors`, NumPy only), shards listed in
``model.safetensors.index.json``, or, when torch is installed,
``pytorch_model.bin`` (sharded too). Each loader checks that the config describes a model
nptransformer builds, renames every tensor to nptransformer's key
(docs/pretrained.md has the tables), and refuses, naming the keys, a
checkpoint with a tensor missing or one it does not know: a silently
skipped weight would give plausible but wrong numbers.

Parameters are created on the current backend (``backend.use("cupy")``
loads onto the GPU) in the requested dtype; the model is returned in eval
mode, and ``model.train()`` makes it ready for fine-tuning.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _checks
from ._files import read_json
from .backend import dtype_name, get_array_module, to_numpy
from .hub import resolve
from .models.bert import BERT, HIDDEN_ACTS
from .models.gpt import GPT
from .safetensors import load_file

# nptransformer key -> (checkpoint keys, transpose). Several keys are concatenated along axis 0
# (BERT's query, key and value are the row blocks of in_proj_weight); transpose turns GPT-2's
# Conv1D weights, stored (in, out), into Linear's (out, in).
_Table = dict[str, tuple[tuple[str, ...], bool]]

_BERT_EXTRA_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")  # buffers of constants, rebuilt here
_BERT_NSP_PREFIX = "cls.seq_relationship."  # next-sentence head of BertForPreTraining: not modelled, skipped
_GPT2_MASK_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older GPT-2 files


def load_bert(path: str | os.PathLike, dtype: Any = np.float32) -> BERT:
    """A Hugging Face BERT checkpoint directory -> :class:`~nptransformer.models.BERT` (eval mode).

    Reads ``BertModel``, ``BertForMaskedLM`` and ``BertForPreTraining``
    files (keys with or without the ``bert.`` prefix, LayerNorm ``gamma``/
    ``beta`` of TF-converted files included). The model gets a pooler when
    the checkpoint has one and an MLM head when it has ``cls.predictions``;
    the next-sentence head is skipped. ``dtype``: float16, float32 or float64.
    """
    path = resolve(path)
    return bert_from_tensors(_read_config(path), _read_tensors(path), path, dtype)


def bert_from_tensors(config: dict, tensors: dict[str, np.ndarray], path: str, dtype: Any = np.float32) -> BERT:
    """:func:`load_bert` on a config and tensors already read (``path`` names them in errors); for task heads."""
    dtype = _float_dtype(dtype)
    _expect(config, path, "model_type", ("bert",), "bert")
    _expect(config, path, "position_embedding_type", ("absolute",), "absolute")
    _expect(config, path, "is_decoder", (False,), False)
    _expect(config, path, "add_cross_attention", (False,), False)
    _expect(config, path, "hidden_act", tuple(HIDDEN_ACTS), "gelu")
    tensors = {_bert_key(k): v for k, v in tensors.items()}
    for key in [k for k in tensors if k in _BERT_EXTRA_KEYS or k.startswith(_BERT_NSP_PREFIX)]:
        del tensors[key]
    pooler = "pooler.dense.weight" in tensors
    mlm = any(k.startswith("cls.predictions.") for k in tensors)
    if mlm:
        _expect(config, path, "tie_word_embeddings", (True,), True)
        _drop_tied(tensors, "cls.predictions.decoder.weight", "embeddings.word_embeddings.weight", path)
        _drop_tied(tensors, "cls.predictions.decoder.bias", "cls.predictions.bias", path)
    sizes = {k: _required(config, path, k) for k in
             ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    optional = {k: config[k] for k in ("hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                                       "pad_token_id", "initializer_range") if k in config}
    model = BERT(**sizes, **optional, hidden_dropout_prob=config.get("hidden_dropout_prob", 0.1),
                 attention_probs_dropout_prob=config.get("attention_probs_dropout_prob", 0.1),
                 add_pooling_layer=pooler, add_mlm_head=mlm, dtype=dtype)
    model.load_state_dict(_gather(tensors, _bert_table(sizes["num_hidden_layers"], pooler, mlm), path))
    return model.eval()


def _bert_key(key: str) -> str:
    key = key.removeprefix("bert.")
    if key.endswith("LayerNorm.gamma"):
        return key.removesuffix("gamma") + "weight"
    if key.endswith("LayerNorm.beta"):
        return key.removesuffix("beta") + "bias"
    return key


def _bert_table(n_layers: int, pooler: bool, mlm: bool) -> _Table:
    table = {f"embeddings.{name}.weight": ((f"embeddings.{name}.weight",), False)
             for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    table.update(_renamed("embeddings.norm", "embeddings.LayerNorm"))
    for i in range(n_layers):
        ours, theirs = f"encoder.layers.{i}", f"encoder.layer.{i}"
        qkv = [f"{theirs}.attention.self.{p}" for p in ("query", "key", "value")]
        table[f"{ours}.self_attn.in_proj_weight"] = (tuple(f"{p}.weight" for p in qkv), False)
        table[f"{ours}.self_attn.in_proj_bias"] = (tuple(f"{p}.bias" for p in qkv), False)
        table.update(_renamed(f"{ours}.self_attn.out_proj", f"{theirs}.attention.output.dense"))
        table.update(_renamed(f"{ours}.norm1", f"{theirs}.attention.output.LayerNorm"))
        table.update(_renamed(f"{ours}.linear1", f"{theirs}.intermediate.dense"))
        table.update(_renamed(f"{ours}.linear2", f"{theirs}.output.dense"))
        table.update(_renamed(f"{ours}.norm2", f"{theirs}.output.LayerNorm"))
    if pooler:
        table.update(_renamed("pooler.dense", "pooler.dense"))
    if mlm:
        table.update(_renamed("mlm_head.dense", "cls.predictions.transform.dense"))
        table.update(_renamed("mlm_head.norm", "cls.predictions.transform.LayerNorm"))
        table["mlm_head.bias"] = (("cls.predictions.bias",), False)
    return table


def load_gpt2(path: str | os.PathLike, dtype: Any = np.float32) -> GPT:
    """A Hugging Face GPT-2 checkpoint directory (``GPT2Model`` or ``GPT2LMHeadModel``) -> :class:`~nptransformer.GPT`.

    GPT-2's ``Conv1D`` stores weights (in, out); they are transposed into
    Linear's (out, in). The config must be one GPT builds: MLP width
    4 n_embd, GELU with the tanh approximation, LayerNorm eps 1e-5, attention
    scaled by 1/sqrt(D) only, one dropout rate. ``dtype``: float16, float32 or float64.
    """
    path = resolve(path)
    dtype = _float_dtype(dtype)
    config = _read_config(path)
    _expect(config, path, "model_type", ("gpt2",), "gpt2")
    _expect(config, path, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
    _expect(config, path, "layer_norm_epsilon", (1e-5,), 1e-5)
    _expect(config, path, "scale_attn_weights", (True,), True)
    _expect(config, path, "scale_attn_by_inverse_layer_idx", (False,), False)
    _expect(config, path, "add_cross_attention", (False,), False)
    sizes = {k: _required(config, path, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")}
    _expect(config, path, "n_inner", (None, 4 * sizes["n_embd"]), None)
    rates = {k: config.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(rates.values())) > 1:
        raise ValueError(f"{path}/config.json: GPT has one dropout rate, but the config sets {rates}")
    tied = config.get("tie_word_embeddings", True)
    tensors = {k.removeprefix("transformer."): v for k, v in _read_tensors(path).items()}
    for key in [k for k in tensors if k.endswith(_GPT2_MASK_SUFFIXES)]:
        del tensors[key]
    if tied:
        _drop_tied(tensors, "lm_head.weight", "wte.weight", path)
    model = GPT(vocab_size=sizes["vocab_size"], block_size=sizes["n_positions"], n_layer=sizes["n_layer"],
                n_head=sizes["n_head"], d_model=sizes["n_embd"], dropout=rates["resid_pdrop"], tie_weights=tied,
                dtype=dtype)
    model.load_state_dict(_gather(tensors, _gpt2_table(sizes["n_layer"], tied), path))
    return model.eval()


def _gpt2_table(n_layers: int, tied: bool) -> _Table:
    table = {"wte.weight": (("wte.weight",), False), "wpe.weight": (("wpe.weight",), False)}
    table.update(_renamed("ln_f", "ln_f"))
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}", f"h.{i}"
        table[f"{ours}.self_attn.in_proj_weight"] = ((f"{theirs}.attn.c_attn.weight",), True)
        table[f"{ours}.self_attn.in_proj_bias"] = ((f"{theirs}.attn.c_attn.bias",), False)
        table.update(_renamed(f"{ours}.self_attn.out_proj", f"{theirs}.attn.c_proj", conv1d=True))
        table.update(_renamed(f"{ours}.norm1", f"{theirs}.ln_1"))
        table.update(_renamed(f"{ours}.linear1", f"{theirs}.mlp.c_fc", conv1d=True))
        table.update(_renamed(f"{ours}.linear2", f"{theirs}.mlp.c_proj", conv1d=True))
        table.update(_renamed(f"{ours}.norm2", f"{theirs}.ln_2"))
    if not tied:
        table["lm_head.weight"] = (("lm_head.weight",), False)
    return table


def bert_tensors(model: BERT) -> dict[str, np.ndarray]:
    """``model``'s weights under Hugging Face ``BertModel`` names (query/key/value split), as NumPy arrays.

    The inverse of :func:`load_bert`'s mapping: ``transformers.BertModel.load_state_dict`` takes them
    (as torch tensors). Shapes: Hugging Face's.
    """
    return _scatter(model.state_dict(), _bert_table(model.num_hidden_layers, model.pooler is not None,
                                                    model.mlm_head is not None))


def gpt2_tensors(model: GPT) -> dict[str, np.ndarray]:
    """``model``'s weights under Hugging Face ``GPT2LMHeadModel`` names (Conv1D weights transposed back).

    The inverse of :func:`load_gpt2`'s mapping, ``transformer.`` prefix included; ``lm_head.weight`` is
    the tied embedding unless the model has its own head. Shapes: Hugging Face's.
    """
    tied = model.lm_head is None
    tensors = {(k if k == "lm_head.weight" else "transformer." + k): v
               for k, v in _scatter(model.state_dict(), _gpt2_table(model.n_layer, tied)).items()}
    if tied:
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    return tensors


def _scatter(state: dict, table: _Table) -> dict[str, np.ndarray]:
    """nptransformer's state dict -> checkpoint tensors: :func:`_gather` backwards (split the fused rows,
    transpose the Conv1D weights back)."""
    tensors = {}
    for ours, (keys, transpose) in table.items():
        parts = np.split(to_numpy(state[ours]), len(keys), axis=0)  # query, key, value are in_proj's row blocks
        for key, part in zip(keys, parts):
            tensors[key] = np.ascontiguousarray(part.T if transpose else part)
    return tensors


def mean_pool(hidden: Any, attention_mask: Any, normalize: bool = False) -> Any:
    """Sentence embeddings: the mean of ``hidden`` over the real tokens. (B, T, H), (B, T) -> (B, H).

    ``attention_mask`` is 1 (or True) for a real token and 0 for padding,
    as the tokenizer returns it; a row with no real token gives zeros. With
    ``normalize`` each row is scaled to unit L2 norm (sentence-transformers'
    ``Normalize``), so dot products are cosine similarities.

    >>> import numpy as np
    >>> hidden = np.array([[[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]])
    >>> mean_pool(hidden, np.array([[1, 1, 0]])).tolist()
    [[2.0, 2.0]]
    >>> mean_pool(hidden, np.array([[0, 1, 0]]), normalize=True).tolist()
    [[0.6, 0.8]]
    """
    _checks.check_float("hidden", hidden)
    _checks.check_array("attention_mask", attention_mask)
    if hidden.ndim != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"hidden must be (B, T, H) and attention_mask (B, T), got {tuple(hidden.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    xp = get_array_module(hidden, attention_mask)
    weights = xp.expand_dims(xp.astype(attention_mask, hidden.dtype), axis=-1)  # (B, T) -> (B, T, 1)
    count = xp.sum(weights, axis=1)  # (B, 1)
    pooled = xp.sum(hidden * weights, axis=1) / xp.where(count > 0, count, 1.0)  # (B, H)
    if normalize:
        norm = xp.sqrt(xp.sum(pooled * pooled, axis=-1, keepdims=True))
        pooled = pooled / xp.where(norm > 1e-12, norm, 1e-12)  # as torch's F.normalize(eps=1e-12)
    return pooled


# -- shared helpers ---------------------------------------------------------------


def _float_dtype(dtype: Any) -> str:
    name = dtype_name(dtype)
    if name not in _checks.FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {_checks.FLOAT_DTYPES}, got {name}")
    return name


def _read_config(path: str) -> dict:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"path must be a Hugging Face checkpoint directory with a config.json, got {path!r}")
    config = read_json(file, "a model's config")
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    return config


def _required(config: dict, path: str, key: str) -> Any:
    if key not in config:
        raise ValueError(f"{path}/config.json has no {key!r}")
    return config[key]


def _expect(config: dict, path: str, key: str, allowed: tuple, default: Any) -> None:
    """Refuse a config value the model cannot reproduce (absent keys take Hugging Face's default)."""
    value = config.get(key, default)
    if value not in allowed:
        raise ValueError(f"{path}/config.json: {key}={value!r} is not supported (supported: "
                         f"{', '.join(repr(a) for a in allowed)})")


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    safetensors_file = os.path.join(path, "model.safetensors")
    if os.path.isfile(safetensors_file):
        return load_file(safetensors_file, mmap=True)  # the model's arrays are the only copy of the weights
    torch_file = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(torch_file):
        return _read_torch(torch_file)
    for index, read in (("model.safetensors.index.json", _mapped), ("pytorch_model.bin.index.json", _read_torch)):
        if os.path.isfile(os.path.join(path, index)):
            return _read_shards(path, index, read)
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin (nor a sharded index)")


def _read_shards(path: str, index: str, read: Any) -> dict[str, np.ndarray]:
    """A sharded checkpoint: the index's ``weight_map`` (tensor -> shard file) must match the shards exactly."""
    index_json = read_json(os.path.join(path, index), "a sharded checkpoint's index")
    weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}/{index} has no weight_map (tensor name -> shard file)")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(shard) != shard:
            raise ValueError(f"{path}/{index}: shard {shard!r} must be a file name in the checkpoint directory")
        part = read(os.path.join(path, shard))
        listed = {k for k, v in weight_map.items() if v == shard}
        if part.keys() != listed:
            raise ValueError(f"{path}/{shard} does not match {index}: missing {sorted(listed - part.keys())}, "
                             f"unlisted {sorted(part.keys() - listed)}")
        tensors.update(part)
    return tensors


def _mapped(file: str) -> dict[str, np.ndarray]:
    return load_file(file, mmap=True)


def _read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{file} is a torch pickle; reading it needs torch (pip install torch), or save the "
                          "checkpoint as model.safetensors") from None
    state = torch.load(file, map_location="cpu", weights_only=True)
    # NumPy has no bfloat16; float32 holds every bfloat16 value exactly
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def _renamed(ours: str, theirs: str, conv1d: bool = False) -> _Table:
    """weight and bias of one layer under a new prefix (a Conv1D weight is transposed)."""
    return {f"{ours}.weight": ((f"{theirs}.weight",), conv1d), f"{ours}.bias": ((f"{theirs}.bias",), False)}


def _drop_tied(tensors: dict, copy: str, original: str, path: str) -> None:
    """A tied tensor is stored once by save_pretrained, or twice by older files: accept an exact copy only."""
    if copy in tensors and original in tensors:
        if not np.array_equal(tensors[copy], tensors[original]):
            raise ValueError(f"{path}: {copy} differs from {original}, but the model ties them (untied heads are "
                             "not supported)")
        del tensors[copy]


def _gather(tensors: dict[str, np.ndarray], table: _Table, path: str) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> nptransformer's state dict, refusing missing and unknown keys."""
    wanted = {key for keys, _ in table.values() for key in keys}
    missing, unknown = sorted(wanted - tensors.keys()), sorted(tensors.keys() - wanted)
    if missing or unknown:
        raise ValueError(f"{path}: the checkpoint does not match the config: missing tensors {missing}, "
                         f"unknown tensors {unknown}")
    state = {}
    for ours, (keys, transpose) in table.items():
        parts = [tensors[k].T if transpose else tensors[k] for k in keys]
        state[ours] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return state
