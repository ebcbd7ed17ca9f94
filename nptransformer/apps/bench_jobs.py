"""The bench's two inference jobs, each raced against transformers on PyTorch with the same weights.

- **Encoder**: sentence embeddings with an all-MiniLM-L6-v2-shaped BERT
  (vocabulary 30,522, 6 layers, hidden 384, 12 heads, feed-forward 1,536):
  32 sentences of 8 to 40 tokens (fixed by the seed; lengths like those of
  short English sentences), padded to the longest, embedded without
  gradients and mean-pooled over the real tokens: ours by
  :func:`nptransformer.sentence_embeddings.sentence_embeddings` (the library's
  embedding call, which runs the encoder on the real tokens only, packed),
  transformers' as one padded batch. Tokenization is not timed (the two tokenizers are
  compared in docs/performance.md).
- **Decode**: greedy generation with the KV cache on the bench's GPT: an
  8-token prompt and 64 new tokens, at batch 1 and batch 8, against
  ``GPT2LMHeadModel.generate`` with the same weights (exported by
  :func:`nptransformer.pretrained.gpt2_tensors`).

Each job alternates the two runners, ``repeats`` times after one warm-up,
and reports the median; it checks that both compute the same thing
(embeddings' largest difference, tokens equal). torch and transformers are
imported only when ``compare`` is set.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .. import backend
from ..models.bert import BERT
from ..pretrained import bert_tensors, gpt2_tensors
from ..sentence_embeddings import sentence_embeddings

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
SENTENCES, PROMPT, NEW_TOKENS = 32, 8, 64


def _race(runners: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per runner (alternating order, one warm-up each) and each runner's last result."""
    results = {name: run() for name, run in runners.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats):
        order = list(runners.items()) if r % 2 == 0 else list(reversed(runners.items()))
        for name, run in order:
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}, results


def sentence_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids (32, T), attention_mask (32, T)): [CLS] random word ids [SEP], padded with 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 41, SENTENCES)
    ids = np.zeros((SENTENCES, int(lengths.max())), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = np.concatenate([[101], rng.integers(1000, MINILM["vocab_size"], n - 2), [102]])
        mask[row, :n] = 1
    return ids, mask


def encoder_job(compare: bool, repeats: int = 5, seed: int = 0) -> dict:
    """Sentences per second embedding :func:`sentence_batch` with the MiniLM-shaped BERT (and transformers')."""
    model = BERT(**MINILM, add_pooling_layer=False, generator=backend.Generator(seed)).eval()
    ids, mask = sentence_batch(seed)

    def ours() -> np.ndarray:
        return backend.to_numpy(sentence_embeddings(model, ids, mask))

    runners = {"ours": ours}
    if compare:
        import torch
        import transformers

        twin = transformers.BertModel(transformers.BertConfig(**MINILM), add_pooling_layer=False).eval()
        twin.load_state_dict({k: torch.from_numpy(v) for k, v in bert_tensors(model).items()})
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)

        def theirs() -> np.ndarray:
            with torch.inference_mode():
                hidden = twin(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                m = mask_t.unsqueeze(-1).to(hidden.dtype)
                return ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()

        runners["torch"] = theirs
    seconds, results = _race(runners, repeats)
    out = {"sentences": SENTENCES, "tokens": int(mask.sum()), "padded_length": int(ids.shape[1]),
           "seconds": seconds, "sentences_per_s": {n: SENTENCES / s for n, s in seconds.items()}}
    if compare:
        out["max_abs_diff"] = float(np.max(np.abs(results["ours"] - results["torch"])))
    return out


def decode_job(model: Any, compare: bool, batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 3,
               seed: int = 0) -> dict:
    """Greedy tokens per second (KV cache) for ``model`` (a GPT), and for transformers' GPT-2 with its weights."""
    model.eval()
    twin = None
    if compare:
        import torch
        import transformers

        config = transformers.GPT2Config(vocab_size=model.vocab_size, n_positions=model.block_size,
                                         n_embd=model.d_model, n_layer=model.n_layer, n_head=model.n_head,
                                         activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, bos_token_id=0, eos_token_id=None, pad_token_id=0)
        twin = transformers.GPT2LMHeadModel(config).eval()
        twin.load_state_dict({k: torch.from_numpy(v) for k, v in gpt2_tensors(model).items()})
    rows = []
    prompt_len = min(PROMPT, model.block_size // 2)
    new_tokens = min(NEW_TOKENS, model.block_size - prompt_len)  # a small model's window caps the run
    for batch_size in batch_sizes:
        prompt = np.random.default_rng(seed + batch_size).integers(0, model.vocab_size, (batch_size, prompt_len))
        runners = {"ours": lambda: backend.to_numpy(model.generate(prompt, new_tokens, use_cache=True))}
        if twin is not None:
            import torch

            prompt_t = torch.from_numpy(prompt)

            def theirs() -> np.ndarray:
                with torch.inference_mode():
                    return twin.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), do_sample=False,
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens).numpy()

            runners["torch"] = theirs
        seconds, results = _race(runners, repeats)
        row = {"batch_size": batch_size, "seconds": seconds,
               "tokens_per_s": {n: batch_size * new_tokens / s for n, s in seconds.items()}}
        if twin is not None:
            ours_ids, their_ids = results["ours"][:, -new_tokens:], results["torch"][:, -new_tokens:]
            row["same_tokens"] = float(np.mean(ours_ids == their_ids))
        rows.append(row)
    return {"prompt_len": prompt_len, "new_tokens": new_tokens, "rows": rows}
