"""Hugging Face ``BertForSequenceClassification`` checkpoints in and out: :func:`load_bert_classifier`,
:func:`save_bert_classifier`.

Loading a plain BERT checkpoint (``BertModel``, e.g. all-MiniLM-L6-v2)
gives a new classifier, initialised as Hugging Face initialises it, ready
for fine-tuning; loading a ``BertForSequenceClassification`` checkpoint
gives its trained ``classifier.weight`` (num_labels, H) and
``classifier.bias`` (num_labels,). Saving writes the same layout
(``config.json`` with ``architectures``, ``num_labels``, ``id2label`` and
``label2id``; ``model.safetensors`` with Hugging Face's key names), so
``transformers.BertForSequenceClassification.from_pretrained`` reads it,
and so does :func:`load_bert_classifier`. Files are replaced atomically.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .backend import to_numpy
from .hub import resolve
from .models.bert import HIDDEN_ACTS, BERT
from .models.bert_classifier import BertForSequenceClassification
from .pretrained import _read_config, _read_tensors, bert_from_tensors, bert_tensors
from .safetensors import save_file

_HEAD = ("classifier.weight", "classifier.bias")


def load_bert_classifier(path: str | os.PathLike, num_labels: int | None = None,
                         dtype: Any = np.float32) -> BertForSequenceClassification:
    """A BERT checkpoint (directory or hub name) -> :class:`~nptransformer.models.BertForSequenceClassification`.

    ``num_labels``: required for a checkpoint without a classifier unless
    its config names labels (``id2label`` / ``num_labels``); checked against
    the classifier when there is one. The model comes in eval mode with
    ``id2label`` (dict int -> str) set; ``model.train()`` before fine-tuning.
    """
    path = resolve(path)
    config, tensors = _read_config(path), _read_tensors(path)
    head = {k: tensors.pop(k) for k in _HEAD if k in tensors}
    if len(head) == 1:
        raise ValueError(f"{path}: the checkpoint has {sorted(head)} but not the other classifier tensor")
    labels = {int(k): str(v) for k, v in config.get("id2label", {}).items()}
    n = num_labels if num_labels is not None else (len(head["classifier.bias"]) if head else
                                                   config.get("num_labels", len(labels) or None))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_labels must be an integer >= 1 (the checkpoint has no classifier and its config "
                         f"names no labels), got {n!r}")
    if head and head["classifier.weight"].shape[0] != n:
        raise ValueError(f"num_labels is {n} but {path}'s classifier has {head['classifier.weight'].shape[0]} rows")
    if "pooler.dense.weight" not in tensors and "bert.pooler.dense.weight" not in tensors:
        raise ValueError(f"{path} has no pooler (pooler.dense.*); the classifier reads the pooled [CLS] vector")
    bert = bert_from_tensors(config, tensors, path, dtype)
    model = BertForSequenceClassification(bert, n, classifier_dropout=config.get("classifier_dropout"),
                                          initializer_range=config.get("initializer_range", 0.02))
    if head:
        model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in head.items()})
    model.id2label = labels if len(labels) == n else {i: f"LABEL_{i}" for i in range(n)}
    return model.eval()


def save_bert_classifier(model: BertForSequenceClassification, directory: str | os.PathLike,
                         id2label: dict[int, str] | None = None) -> None:
    """Write ``model`` as a Hugging Face ``BertForSequenceClassification`` checkpoint directory.

    ``id2label`` (default: ``model.id2label`` when set, else ``LABEL_i``)
    names the classes in ``config.json``. Weights are saved in the model's dtype.
    """
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"model must be a BertForSequenceClassification, got {type(model).__name__}")
    labels = id2label if id2label is not None else getattr(model, "id2label", None)
    labels = {int(k): str(v) for k, v in (labels or {i: f"LABEL_{i}" for i in range(model.num_labels)}).items()}
    if sorted(labels) != list(range(model.num_labels)):
        raise ValueError(f"id2label must name the classes 0..{model.num_labels - 1}, got keys {sorted(labels)}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {"bert." + key: value for key, value in bert_tensors(model.bert).items()}
    for key in _HEAD:
        tensors[key] = to_numpy(model.state_dict()[key])
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with atomic_write(os.path.join(directory, "config.json")) as f:
        f.write(json.dumps(_config(model, labels), indent=2).encode("utf-8"))


def _config(model: BertForSequenceClassification, labels: dict[int, str]) -> dict:
    bert: BERT = model.bert
    layer = bert.encoder.layers[0]
    hidden_act = next(k for k, v in HIDDEN_ACTS.items() if v == layer.feed_forward.activation)
    return {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "vocab_size": bert.vocab_size, "hidden_size": bert.hidden_size,
        "num_hidden_layers": bert.num_hidden_layers, "num_attention_heads": bert.num_attention_heads,
        "intermediate_size": layer.linear1.out_features, "hidden_act": hidden_act,
        "hidden_dropout_prob": bert.embeddings.dropout.p, "attention_probs_dropout_prob": layer.self_attn.dropout,
        "max_position_embeddings": bert.max_position_embeddings, "type_vocab_size": bert.type_vocab_size,
        "layer_norm_eps": bert.embeddings.norm.eps, "pad_token_id": bert.embeddings.word_embeddings.padding_idx,
        "classifier_dropout": model.dropout.p, "num_labels": model.num_labels,
        "id2label": {str(i): name for i, name in labels.items()},
        "label2id": {name: i for i, name in labels.items()},
    }
