"""Train two tiny models and draw what their attention looks at (the figures of docs/attention.md).

1. An encoder-decoder learns to reverse digit strings. To write output token
   j it must read input token n-1-j, so its cross-attention should sit on the
   anti-diagonal.
2. A character GPT learns a few KB of Shakespeare (examples/data/tiny_shakespeare_sample.txt)
   for a few hundred steps; its heads split into ones that look at the
   previous character or two and ones that look further back.

Run from the repository root with the package importable (pip install -e .,
or PYTHONPATH=.); NumPy on two CPU cores takes a few minutes:

    python examples/attention_maps.py            # writes docs/figures/*.png

Needs matplotlib (pip install nptransformer[viz]).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import matplotlib
import numpy as np

import nptransformer as npt
from nptransformer import backend, nn, optim
from nptransformer.data import ReversalTask, char_batch
from nptransformer.generation import greedy_decode
from nptransformer.viz import attention_maps, plot_attention

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def train(model, batches, steps, lr, ignore_index=-100, log_every=100):
    """Adam with a short linear warm-up; batches() -> (inputs tuple, targets)."""
    opt = optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 50)
        inputs, targets = batches()
        loss = criterion(model(*inputs), targets)
        model.backward(criterion.backward())
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % log_every == 0 or step == steps:
            print(f"  step {step:4d}  loss {float(backend.to_numpy(loss)):.3f}  ({time.perf_counter() - start:.0f}s)")
    model.eval()
    return model


def reversal_figure(steps: int, figures: pathlib.Path) -> None:
    print("digit reversal (encoder-decoder)")
    task = ReversalTask(min_len=4, max_len=10)
    g = backend.Generator(0)
    model = npt.Seq2SeqTransformer(task.vocab_size, task.vocab_size, d_model=64, nhead=4, num_encoder_layers=2,
                                   num_decoder_layers=2, dim_feedforward=128, dropout=0.0, max_len=16,
                                   pad_id=task.PAD, generator=g)
    train(model, lambda: task.batch(g, 64), steps, lr=1e-3, ignore_index=task.PAD)

    digits, lengths = task.sample(g, 64, held_out=True)
    (src, _), tgt_out = task.encode(digits, lengths)
    out = greedy_decode(model, src, max_len=12, bos_id=task.BOS, eos_id=task.EOS)
    correct = sum(task.to_text(o) == task.to_text(t) for o, t in zip(out, tgt_out))
    print(f"  held-out sequences reversed exactly: {correct}/64")

    i = int(np.argmax(lengths))  # the longest example makes the clearest picture
    one_src, one_out = src[i:i + 1, :lengths[i]], out[i:i + 1]
    eos = np.flatnonzero(backend.to_numpy(one_out[0]) == task.EOS)
    n_out = int(eos[0]) if eos.size else one_out.shape[1] - 1  # BOS, digits..., EOS at n_out
    with npt.no_grad():  # teacher-force the decoded output: the query at BOS, d1 ... predicts d1 ... EOS
        model(one_src, one_out[:, :n_out], need_weights=True)
    maps = attention_maps(model)
    cross = backend.to_numpy(maps["transformer.decoder.layers.1.multihead_attn"])[0]  # (H, T, S)
    x_labels = task.to_text(one_src[0]).split()
    y_labels = [task.to_text(t) or "?" for t in backend.to_numpy(one_out[0, 1:n_out + 1])[:, None]]  # what row i writes
    plot_attention(cross.mean(axis=0), x_labels=x_labels, y_labels=y_labels,
                   title="reversal: decoder layer 2 cross-attention\n(mean of 4 heads)")
    _save(figures / "reverse_cross_attention.png")
    plot_attention(cross, x_labels=x_labels, y_labels=y_labels, title="the same layer, head by head")
    _save(figures / "reverse_cross_attention_heads.png")


def char_gpt_figure(steps: int, figures: pathlib.Path) -> None:
    print("character GPT (a few KB of Shakespeare)")
    text = (ROOT / "examples" / "data" / "tiny_shakespeare_sample.txt").read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    g = backend.Generator(1)
    model = npt.GPT(vocab_size=len(chars), block_size=64, n_layer=2, n_head=4, d_model=64, generator=g)
    train(model, lambda: char_batch(data, 64, 32, g), steps, lr=3e-3)

    prompt = "Romeo.\nI will "
    idx = backend.asarray(np.array([[stoi[c] for c in prompt]]))
    sample = model.generate(idx, 120, do_sample=True, temperature=0.8, top_k=10, seed=0, crop=True)
    print("  sample:", repr("".join(chars[i] for i in backend.to_numpy(sample[0]).tolist())))

    line = "No, for then we should be"
    with npt.no_grad():
        model(backend.asarray(np.array([[stoi[c] for c in line]])), need_weights=True)
    maps = attention_maps(model)
    labels = [c if c != " " else "\u2423" for c in line]  # a visible space
    fig, axes = plt.subplots(2, 4, figsize=(15, 7.6), layout="constrained")
    for layer, row in enumerate(axes):
        weights = backend.to_numpy(maps[f"blocks.{layer}.self_attn"])[0]  # (H, T, T)
        for h, ax in enumerate(row):
            plot_attention(weights[h], x_labels=labels, y_labels=labels, ax=ax, colorbar=False,
                           title=f"block {layer + 1}, head {h}")
    fig.colorbar(axes[0][0].images[0], ax=axes, shrink=0.6)
    fig.suptitle(f"character GPT self-attention over {line!r}")
    _save(figures / "char_gpt_attention.png")


def _save(path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
    print(f"  wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reversal-steps", type=int, default=1200)
    parser.add_argument("--gpt-steps", type=int, default=600)
    parser.add_argument("--only", choices=["reversal", "gpt"], default=None, help="draw one of the two figures")
    parser.add_argument("--figures", type=pathlib.Path, default=ROOT / "docs" / "figures", help="output folder")
    args = parser.parse_args()
    if args.only in (None, "reversal"):
        reversal_figure(args.reversal_steps, args.figures)
    if args.only in (None, "gpt"):
        char_gpt_figure(args.gpt_steps, args.figures)


if __name__ == "__main__":
    main()
