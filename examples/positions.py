"""Which position scheme extrapolates? The same small GPT trained at length T, evaluated at T, 2T and 4T.

Run from the repository root (NumPy CPU, a few minutes on 2 cores):

    python examples/positions.py                      # the table of docs/positions.md
    python examples/positions.py --steps 100          # a quick look
    python examples/positions.py --plot docs/figures/positions.png

Five GPTs differ only in ``positional`` ("learned", "sinusoidal", "rotary",
"alibi", "relative"): same width, depth, data, batches, seed and optimizer.
They train on windows of T characters of examples/data/shakespeare.txt (the
first 90%) and are evaluated on windows of T, 2T and 4T characters of the
last 10%: the mean cross-entropy over every position of a window. Learned
positions have a table of T rows and cannot see past T (reported as such).
Also prints the KV-cache bytes of a GPT-2-small-shaped model (12 layers, 12
heads, d_model 768; a 256-token vocabulary, which the cache does not depend
on) after 1,024 tokens, for n_kv_head = 12, 4, 2, 1.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nptransformer import GPT, CharTokenizer, backend, no_grad  # noqa: E402
from nptransformer.backend import Generator  # noqa: E402
from nptransformer.data import char_batch  # noqa: E402
from nptransformer.nn import CrossEntropyLoss  # noqa: E402
from nptransformer.optim import AdamW  # noqa: E402
from nptransformer.training import Trainer  # noqa: E402

SCHEMES = ("learned", "sinusoidal", "rotary", "alibi", "relative")


def train_and_evaluate(scheme: str, train: np.ndarray, val: np.ndarray, vocab: int, args: argparse.Namespace) -> dict:
    T = args.length
    backend.manual_seed(args.seed)
    block = T if scheme == "learned" else 4 * T  # only learned positions have a table bounded by block_size
    model = GPT(vocab, block, n_layer=args.layers, n_head=4, d_model=args.width, positional=scheme,
                dtype="float32")
    trainer = Trainer(model, AdamW(model.parameters(), lr=args.lr, weight_decay=0.01), CrossEntropyLoss(),
                      lambda g: char_batch(train, T, args.batch, g), generator=Generator(args.seed),
                      out=io.StringIO())  # quiet: the table is the output
    start = time.perf_counter()
    trainer.fit(args.steps, log_every=args.steps)
    seconds = time.perf_counter() - start
    criterion, result = CrossEntropyLoss(), {"train_s": seconds}
    model.eval()
    for factor in (1, 2, 4):
        L = factor * T
        if L > model.block_size:
            result[factor] = None  # learned positions: no row for position T and beyond
            continue
        starts = np.linspace(0, len(val) - L - 1, args.eval_windows).astype(np.int64)
        windows = val[starts[:, None] + np.arange(L + 1)]
        with no_grad():
            result[factor] = float(criterion(model(windows[:, :-1]), windows[:, 1:]))
    return result


def cache_bytes() -> dict[int, int]:
    out = {}
    for kv in (12, 4, 2, 1):
        model = GPT(256, 1024, n_layer=12, n_head=12, d_model=768, positional="rotary", n_kv_head=kv).eval()
        cache = model.new_cache(1024)
        with no_grad():
            model(np.zeros((1, 1024), dtype=np.int64), cache=cache)
        out[kv] = sum(a.nbytes for layer in cache.layers for a in (layer.self_attn.keys, layer.self_attn.values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=32, help="training length T")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write a plot of loss against evaluation length to this PNG")
    parser.add_argument("--no-cache-bytes", action="store_true")
    args = parser.parse_args()
    text = (ROOT / "examples" / "data" / "shakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer(text)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    split = int(0.9 * len(ids))
    results = {s: train_and_evaluate(s, ids[:split], ids[split:], tok.vocab_size, args) for s in SCHEMES}
    T = args.length
    print(f"| positions | loss at T = {T} | at 2T = {2 * T} | at 4T = {4 * T} | training time (s) |")
    print("|---|---|---|---|---|")
    for s, r in results.items():
        cells = [f"{r[f]:.3f}" if r[f] is not None else "cannot (no position row)" for f in (1, 2, 4)]
        print(f"| {s} | " + " | ".join(cells) + f" | {r['train_s']:.0f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for s, r in results.items():
            xs = [f * T for f in (1, 2, 4) if r[f] is not None]
            ax.plot(xs, [r[f] for f in (1, 2, 4) if r[f] is not None], marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_xticks([T, 2 * T, 4 * T], [str(T), str(2 * T), str(4 * T)])
        ax.set_xlabel("evaluation length (trained at %d)" % T)
        ax.set_ylabel("validation cross-entropy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    if not args.no_cache_bytes:
        for kv, n in cache_bytes().items():
            print(f"n_kv_head={kv}: KV cache {n:,} bytes")


if __name__ == "__main__":
    main()
