"""``python -m nptransformer embed``: cosine similarities of texts embedded by a Hugging Face BERT checkpoint."""

from __future__ import annotations

from typing import Any

from .. import backend
from ..pretrained import load_bert
from ..sentence_embeddings import sentence_embeddings
from ..tokenizers import BertTokenizer


def run_cli(args: Any) -> int:
    """``nptransformer embed --model DIR TEXT ...``: print the cosine similarities of the texts' embeddings."""
    model = load_bert(args.model, dtype=args.dtype)
    tokenizer = BertTokenizer.from_pretrained(args.model)
    batch = tokenizer(args.texts, padding=True, truncation=True, return_tensors="np",
                      max_length=min(tokenizer.model_max_length, model.max_position_embeddings))
    ids, types, mask = (backend.asarray(batch[k]) for k in ("input_ids", "token_type_ids", "attention_mask"))
    embeddings = backend.to_numpy(sentence_embeddings(model, ids, mask, types, normalize=True))
    similarity = embeddings @ embeddings.T  # (N, H) @ (H, N): unit vectors, so cosines
    for i, text in enumerate(args.texts):
        print(f"[{i}] {text}")
    print("\ncosine similarity")
    print("     " + "".join(f"{f'[{j}]':>8}" for j in range(len(args.texts))))
    for i, row in enumerate(similarity):
        print(f"{f'[{i}]':<5}" + "".join(f"{v:>8.4f}" for v in row))
    return 0
