"""What the server computes: sentence embeddings (BERT family) or text continuations (GPT family).

Each service turns a batch of requests into forward passes over groups of
similar length (embeddings) or one batched greedy decoding (generation) and gives back one result per
request, equal to what the request alone would get: padding is masked
(right padding for BERT, left padding for GPT with positions counted from
each row's first real token), so batch-mates never change a result beyond
float rounding (checked by tests/test_serving.py and the load test).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: greedy continuation of at most ``max_new_tokens`` tokens, cut at the first ``stop`` string."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()


class EmbeddingService:
    """Texts -> unit-length mean-pooled sentence embeddings (sentence-transformers' recipe), one forward per batch."""

    kind = "embeddings"

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_length = min(tokenizer.model_max_length, model.max_position_embeddings) \
            if max_length is None else max_length

    def compute(self, texts: list[str]) -> list[list[float]]:
        """A batch of texts -> their embeddings, as lists of floats (JSON-ready)."""
        from ..sentence_embeddings import sentence_embeddings

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="np")
        ids, types, mask = (backend.asarray(batch[k]) for k in ("input_ids", "token_type_ids", "attention_mask"))
        pooled = sentence_embeddings(self.model, ids, mask, types, normalize=True)  # (B, H), in length groups
        return backend.to_numpy(pooled).astype(np.float64).tolist()


class GenerationService:
    """Prompts -> greedy continuations; the batch is decoded together, left-padded."""

    kind = "generation"

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.eos = getattr(model, "eos_token_id", None)

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError when the request cannot fit the model's context."""
        n = len(self.tokenizer.encode(request.prompt))
        if n < 1 or n + request.max_new_tokens > self.model.max_positions:
            raise ValueError(f"prompt of {n} tokens + max_new_tokens {request.max_new_tokens} must fit the "
                             f"model's context of {self.model.max_positions} (and the prompt must not be empty)")

    def compute(self, requests: list[GenerationRequest]) -> list[str]:
        """A batch of requests -> their continuations, each as :func:`~nptransformer.textgen.generate_text` gives."""
        encoded = [self.tokenizer.encode(r.prompt) for r in requests]
        out: list[str | None] = [None] * len(requests)
        for group in self._groups(encoded, requests):
            width = max(len(encoded[i]) for i in group)
            steps = max(requests[i].max_new_tokens for i in group)
            ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(group):
                ids[row, width - len(encoded[i]):], mask[row, width - len(encoded[i]):] = encoded[i], 1
            tokens = backend.to_numpy(self.model.generate(backend.asarray(ids), steps,
                                                          attention_mask=backend.asarray(mask)))[:, width:]
            for row, i in enumerate(group):
                out[i] = self._text(tokens[row, :requests[i].max_new_tokens].tolist(), requests[i].stop)
        return out

    def _groups(self, encoded: list[list[int]], requests: list[GenerationRequest]) -> list[list[int]]:
        """Requests split so that each group's longest prompt + most new tokens fits the context."""
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i]) + requests[i].max_new_tokens)
        groups: list[list[int]] = []
        width = steps = 0
        for i in order:
            w, s = max(width, len(encoded[i])), max(steps, requests[i].max_new_tokens)
            if groups and w + s <= self.model.max_positions:
                groups[-1].append(i)
                width, steps = w, s
            else:
                groups.append([i])
                width, steps = len(encoded[i]), requests[i].max_new_tokens
        return groups

    def _text(self, tokens: list[int], stop: tuple[str, ...]) -> str:
        if self.eos is not None and self.eos in tokens:
            tokens = tokens[:tokens.index(self.eos)]
        text = self.tokenizer.decode_bytes(tokens).decode("utf-8", errors="replace")
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
        return text[:cut]


def load_service(name_or_path: str | os.PathLike, dtype: str = "float32") -> EmbeddingService | GenerationService:
    """A checkpoint directory or hub name -> the service its ``model_type`` calls for (bert or gpt2)."""
    from ..hub import resolve

    path = resolve(name_or_path)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    with open(config_file, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type == "bert":
        from ..pretrained import load_bert
        from ..tokenizers import BertTokenizer

        return EmbeddingService(load_bert(path, dtype=dtype), BertTokenizer.from_pretrained(path))
    if model_type == "gpt2":
        from ..textgen import load_text_model

        return GenerationService(*load_text_model(path, dtype=dtype))
    raise ValueError(f"{path}/config.json: model_type {model_type!r} cannot be served (bert: embeddings, "
                     "gpt2: generation)")
