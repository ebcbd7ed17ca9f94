"""Before the Transformer: recurrent encoder-decoders with and without attention, measured on one task.

The task is digit reversal (:class:`~nptransformer.data.ReversalTask`): output
token j is input token n-1-j, so the answer needs the whole input. Every
model is trained with the same loop, optimizer, batches and step budget on
lengths 3..L and tested on held-out sequences of each length 5..2L:

- RNN, no attention: the decoder sees the source only through the encoder's final states;
- RNN + Bahdanau attention (additive, queried with the previous decoder state);
- RNN + Luong attention (general score, queried with the current state);
- a Transformer encoder-decoder of about the same parameter count;

then the Luong RNN and the Transformer again with scheduled sampling
(the share of their own predictions fed to the decoder rising linearly to
``--ss-max`` over training). Last, the time of one training step (forward
and backward) of an LSTM layer and of a Transformer encoder layer of the
same width, against sequence length.

Run from the repository root (NumPy, one BLAS thread; about 12 minutes on 2 cores):

    python examples/seq2seq_history.py             # writes docs/figures/seq2seq_*.png and seq2seq_history.json

Needs matplotlib (pip install nptransformer[viz]). docs/seq2seq-history.md reports the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nptransformer import backend, nn, viz  # noqa: E402
from nptransformer._atomic import atomic_write  # noqa: E402
from nptransformer.backend import Generator, to_numpy  # noqa: E402
from nptransformer.data import ReversalTask  # noqa: E402
from nptransformer.generation import greedy_decode  # noqa: E402
from nptransformer.generation.scheduled_sampling import ScheduledSampling, linear_schedule  # noqa: E402
from nptransformer.grad_mode import no_grad  # noqa: E402
from nptransformer.models import RNNSeq2Seq, Seq2SeqTransformer  # noqa: E402
from nptransformer.optim import AdamW, WarmupCosine, param_groups_for_weight_decay  # noqa: E402
from nptransformer.training import Trainer, blas_threads  # noqa: E402

V = ReversalTask.vocab_size


def build(kind: str, max_len: int, seed: int) -> Any:
    """The four models; hidden sizes chosen so that each has 105k-120k parameters."""
    g = Generator(seed)
    if kind == "transformer":
        return Seq2SeqTransformer(V, V, d_model=64, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                                  dim_feedforward=256, dropout=0.0, norm_first=True, max_len=max_len,
                                  share_embeddings=True, tie_output=True, pad_id=ReversalTask.PAD, generator=g)
    attention = {"rnn": None, "bahdanau": "bahdanau", "luong": "luong"}[kind]
    hidden = {"rnn": 72, "bahdanau": 56, "luong": 64}[kind]
    return RNNSeq2Seq(V, V, embed_dim=32, hidden_size=hidden, cell="lstm", attention=attention,
                      pad_id=ReversalTask.PAD, max_len=max_len, generator=g)


def train(model: Any, task: ReversalTask, steps: int, batch_size: int, seed: int, ss_max: float) -> float:
    """AdamW, warmup + cosine, clipping at 1, the library's Trainer; returns the wall time in seconds."""
    backend.manual_seed(seed)
    optimizer = AdamW(param_groups_for_weight_decay(model, 0.01), lr=3e-3, betas=(0.9, 0.98))
    schedule = WarmupCosine(optimizer, warmup_steps=steps // 20, total_steps=steps, min_lr=3e-4)
    batches: Callable = lambda g: task.batch(g, batch_size)  # noqa: E731
    if ss_max > 0:
        batches = ScheduledSampling(model, batches, linear_schedule(steps, ss_max), pad_id=task.PAD)
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(ignore_index=task.PAD), batches, schedule=schedule,
                      max_grad_norm=1.0, generator=Generator(seed + 1), out=io.StringIO())
    start = time.perf_counter()
    trainer.fit(steps, log_every=steps)
    return time.perf_counter() - start


def evaluate(model: Any, lengths: range, n: int) -> dict[int, dict[str, float]]:
    """Per source length: free-running exact match (greedy) and teacher-forced token accuracy, n held-out sequences."""
    results = {}
    for length in lengths:
        task = ReversalTask(length, length)
        (src, tgt_in), tgt_out = task.batch(Generator(10_000 + length), n, held_out=True)
        want = to_numpy(tgt_out)
        with no_grad():
            forced = np.argmax(to_numpy(model.eval()(src, tgt_in)), axis=-1)
        real = want != task.PAD
        pred = to_numpy(greedy_decode(model, src, max_len=length + 1, bos_id=task.BOS, eos_id=task.EOS))[:, 1:]
        pred = np.pad(pred, ((0, 0), (0, want.shape[1] - pred.shape[1])), constant_values=task.PAD)
        results[length] = {"exact_match": float((pred == want).all(axis=1).mean()),
                           "token_accuracy": float((forced == want)[real].mean())}
        model.train()
    return results


def attention_map(model: Any, kind: str, src: Any, tgt_in: Any) -> np.ndarray:
    """The (T, S) attention of row 0 under teacher forcing (Transformer: cross-attention averaged over heads)."""
    with no_grad():
        if kind == "transformer":
            model.eval()(src, tgt_in, need_weights=True)
            maps = viz.attention_maps(model)
            w = next(v for k, v in maps.items() if k.endswith("multihead_attn"))
            return to_numpy(w)[0].mean(axis=0)
        model.eval()(src, tgt_in)
        return to_numpy(model.attention_maps()["attention"])[0, 0]


def step_times(lengths: list[int], width: int, batch: int, repeats: int) -> dict[str, dict[int, float]]:
    """Median seconds of one forward + backward of an LSTM layer and a Transformer encoder layer, per length."""
    layers = {"LSTM": nn.LSTM(width, width, batch_first=True, generator=Generator(0)),
              "TransformerEncoderLayer": nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0,
                                                                    batch_first=True)}
    out: dict[str, dict[int, float]] = {name: {} for name in layers}
    rng = np.random.default_rng(0)
    for T in lengths:
        x = rng.normal(size=(batch, T, width)).astype(np.float32)
        for name, layer in layers.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = layer(x)
                y = y[0] if isinstance(y, tuple) else y
                layer.backward(np.ones_like(y))
                times.append(time.perf_counter() - t0)
            layer.zero_grad()
            out[name][T] = float(np.median(times))
    return out


def plot(results: dict, maps: dict, times: dict, lengths: range, train_max: int, out_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for name, res in results.items():
        for ax, metric in zip(axes, ("exact_match", "token_accuracy")):
            ax.plot(list(lengths), [res["by_length"][n][metric] for n in lengths], marker="o", ms=3, label=name)
    for ax, title in zip(axes, ("free-running exact match (greedy)", "teacher-forced token accuracy")):
        ax.axvline(train_max + 0.5, color="gray", ls="--", lw=1)
        ax.set_xlabel("source length (dashed: longest trained)")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.savefig(out_dir / "seq2seq_accuracy_vs_length.png", dpi=110)

    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 3.6), layout="constrained")
    for ax, (name, w) in zip(np.atleast_1d(axes), maps.items()):
        viz.plot_attention(w, ax=ax, title=name, colorbar=False)
        ax.set_xlabel("source position")
        ax.set_ylabel("target position")
    fig.savefig(out_dir / "seq2seq_attention_maps.png", dpi=110)

    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    for name, per in times.items():
        ax.plot(list(per), [1e3 * v for v in per.values()], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("forward + backward, ms (shared machine)")
    ax.legend()
    fig.savefig(out_dir / "seq2seq_step_time.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-max-len", type=int, default=10, help="L: train on lengths 3..L, test on 5..2L")
    parser.add_argument("--eval-n", type=int, default=100, help="held-out sequences per test length")
    parser.add_argument("--ss-max", type=float, default=0.25, help="final scheduled-sampling probability")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (0: BLAS's default)")
    parser.add_argument("--step-lengths", default="16,32,64,128,256", help="sequence lengths of the step timing")
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    L = args.train_max_len
    task, lengths = ReversalTask(3, L), range(5, 2 * L + 1)
    runs = [("RNN, no attention", "rnn", 0.0), ("RNN + Bahdanau", "bahdanau", 0.0), ("RNN + Luong", "luong", 0.0),
            ("Transformer", "transformer", 0.0), ("RNN + Luong, scheduled sampling", "luong", args.ss_max),
            ("Transformer, scheduled sampling", "transformer", args.ss_max)]
    results, maps = {}, {}
    start = time.perf_counter()
    (example_src, example_tgt), _ = ReversalTask(L, L).batch(Generator(77), 1, held_out=True)
    with blas_threads(args.threads or None):
        for name, kind, ss in runs:
            model = build(kind, 2 * L + 2, seed=0)
            seconds = train(model, task, args.steps, args.batch_size, seed=0, ss_max=ss)
            by_length = evaluate(model, lengths, args.eval_n)
            results[name] = {"parameters": model.num_parameters(), "train_seconds": seconds, "by_length": by_length}
            if ss == 0.0 and kind != "rnn":
                maps[name] = attention_map(model, kind, example_src, example_tgt)
            shortest = by_length[lengths[0]]["exact_match"]
            print(f"{name:<34} {model.num_parameters():>7} params  trained {seconds:6.1f}s  "
                  f"exact match at length {lengths[0]}: {shortest:.3f}", flush=True)
        times = step_times([int(t) for t in args.step_lengths.split(",")], width=64, batch=32, repeats=5)
    plot(results, maps, times, lengths, L, out_dir)
    total = time.perf_counter() - start
    with atomic_write(out_dir / "seq2seq_history.json") as f:  # a crash never leaves half a file
        f.write(json.dumps({"args": vars(args), "results": results, "step_times": times, "total_seconds": total},
                           indent=1).encode())
    print(f"total wall time {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
