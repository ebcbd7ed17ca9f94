"""``BertForSequenceClassification``: BERT, its pooler, dropout and a linear classifier, in Hugging Face's layout.

    pooled = tanh(W_p h[:, 0] + b_p)              # BertPooler: the [CLS] position, (B, T, H) -> (B, H)
    logits = W_c dropout(pooled) + b_c            # classifier: (B, H) -> (B, num_labels)

The submodules are named as Hugging Face names them (``bert``,
``classifier``), so :mod:`nptransformer.pretrained_classifier` maps the
``classifier.weight`` / ``classifier.bias`` tensors one to one, and the
BERT part as :func:`~nptransformer.pretrained.load_bert` does.

>>> import numpy as np
>>> bert = BERT(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
>>> BertForSequenceClassification(bert, num_labels=3)(np.array([[2, 5, 7, 3]])).shape
(1, 3)
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..nn import init
from ..nn.dropout import Dropout
from ..nn.linear import Linear
from ..nn.module import Module
from ..registry import ModuleCheck, register_module_check
from .bert import BERT


class BertForSequenceClassification(Module):
    """Sequence classification: ``model(input_ids, token_type_ids=None, attention_mask=None)`` -> logits (B, num_labels).

    ``bert`` must have its pooler (``add_pooling_layer=True``).
    ``classifier_dropout`` (default: BERT's hidden dropout, as Hugging Face)
    is applied to the pooled vector in training mode. The classifier is
    initialised N(0, ``initializer_range``) with a zero bias. Train with
    :class:`~nptransformer.nn.CrossEntropyLoss` on the logits; ``backward``
    takes dL/dlogits.
    """

    def __init__(self, bert: BERT, num_labels: int, classifier_dropout: float | None = None,
                 initializer_range: float = 0.02, generator: Any = None):
        super().__init__()
        if not isinstance(bert, BERT):
            raise TypeError(f"bert must be a BERT, got {type(bert).__name__}")
        if bert.pooler is None:
            raise ValueError("bert has no pooler: build it with add_pooling_layer=True (the classifier reads the "
                             "pooled [CLS] vector)")
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be an integer >= 1, got {num_labels!r}")
        rate = bert.embeddings.dropout.p if classifier_dropout is None else classifier_dropout
        dtype = backend.dtype_name(bert.pooler.dense.weight.data.dtype)
        self.bert, self.num_labels = bert, num_labels
        self.dropout = Dropout(rate)
        self.classifier = Linear(bert.hidden_size, num_labels, dtype=dtype)
        init.normal_(self.classifier.weight, 0.0, initializer_range, generator=generator)
        init.zeros_(self.classifier.bias)

    def forward(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
        """input_ids (B, T) -> logits (B, num_labels); ``token_type_ids`` and ``attention_mask`` as :class:`BERT`."""
        hidden = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        return self.classifier(self.dropout(self.bert.pooler(hidden)))  # (B, H) -> (B, num_labels)

    def backward(self, dlogits: Any) -> None:
        """dL/dlogits (B, num_labels) -> None; every parameter's gradient is accumulated."""
        dpooled = self.dropout.backward(self.classifier.backward(dlogits))
        self.bert.backward(self.bert.pooler.backward(dpooled))

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}"


def _check(rng: Any) -> ModuleCheck:
    bert = BERT(vocab_size=9, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=6,
                hidden_act="gelu_new", max_position_embeddings=6, initializer_range=0.5, dtype="float64")
    model = BertForSequenceClassification(bert, num_labels=3, classifier_dropout=0.2, initializer_range=0.5)
    ids = backend.asarray(rng.integers(1, 9, size=(2, 5)))  # not pad_token_id 0: its row is frozen
    mask = backend.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype="int64")
    return ModuleCheck(model, (ids, None, mask), wrt=())


register_module_check("BertForSequenceClassification", _check)
