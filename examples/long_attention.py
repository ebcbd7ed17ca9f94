"""Long sequences: time and peak memory of one attention layer, a long-range lookup, and a GPT step at T = 8,192.

    python examples/long_attention.py                 # all three parts (several minutes on 2 cores)
    python examples/long_attention.py --part layer    # or: lookup, favor, gpt

``layer``: forward + backward of one causal attention op, (B, H, T, D) =
(1, 4, T, 64) float32 (the bench's width, 256), for T = 256 ... 16,384:
the reference (which stores the (B, H, T, T) probabilities), the blocked
kernel (the default below the tiled kernel's threshold), the tiled exact
kernel, sliding-window attention (window 256) and linear attention (elu + 1).
Peak memory is what tracemalloc sees NumPy allocate during the call, above
q, k, v; the reference and blocked kernel stop where their stored matrices
would pass ``--budget-gib``.

``lookup``: a key planted at a random position in the first quarter of a
T = 4,096 sequence; the last query is that key (times ``sharpness``), the
values are one-hot labels of 16 classes; a variant retrieves when the last
output's argmax is the planted label (chance: 1/16). No training: it
measures what each attention can express, not what a model learns.

``favor``: FAVOR+'s mean absolute error against softmax attention as the
number m of random features grows (non-causal, T = 512, D = 64).

``gpt``: one training step (forward, backward) of a GPT of the bench's
width (4 layers, 4 heads, d_model 256, float32) at T = 8,192, batch 1,
with the tiled kernel (the dispatch picks it), peak memory by tracemalloc.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from nptransformer import GPT, backend
from nptransformer.functional import (favor_features, linear_attention_backward, linear_attention_forward,
                                      scaled_dot_product_attention_backward, scaled_dot_product_attention_forward,
                                      sliding_window_attention_backward, sliding_window_attention_forward)
from nptransformer.kernels import KERNELS

TILED = KERNELS["scaled_dot_product_attention.tiled"]
BLOCKED = KERNELS["scaled_dot_product_attention.blocked"]
WINDOW = 256


def variants() -> dict:
    """name -> (forward(q, k, v) -> (out, ctx), backward, stores a (B, H, T, T) matrix)."""
    return {
        "reference": (lambda q, k, v: scaled_dot_product_attention_forward(q, k, v, is_causal=True),
                      scaled_dot_product_attention_backward, True),
        "blocked": (lambda q, k, v: BLOCKED.forward(q, k, v, is_causal=True), BLOCKED.backward, True),
        "tiled": (lambda q, k, v: TILED.forward(q, k, v, is_causal=True), TILED.backward, False),
        "sliding window": (lambda q, k, v: sliding_window_attention_forward(q, k, v, window=WINDOW, is_causal=True),
                           sliding_window_attention_backward, False),
        "linear (elu+1)": (lambda q, k, v: linear_attention_forward(q, k, v, is_causal=True),
                           linear_attention_backward, False),
    }


def step(forward, backward, q, k, v) -> None:
    out, ctx = forward(q, k, v)
    backward(np.ones_like(out), ctx)


def measure_layer(lengths: list[int], budget_gib: float) -> None:
    rng = np.random.default_rng(0)
    print("| T | " + " | ".join(variants()) + " |")
    print("|---:|" + "---:|" * len(variants()))
    for t in lengths:
        q, k, v = (rng.normal(size=(1, 4, t, 64)).astype(np.float32) for _ in range(3))
        cells = []
        for name, (forward, backward, quadratic) in variants().items():
            if quadratic and 3 * 4 * t * t * 4 > budget_gib * 2**30:  # scores, probabilities, their gradient
                cells.append("over budget")
                continue
            start = time.perf_counter()
            step(forward, backward, q, k, v)
            seconds = time.perf_counter() - start
            tracemalloc.start()
            step(forward, backward, q, k, v)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            cells.append(f"{seconds:.3g} s, {peak / 2**20:.0f} MiB")
        print(f"| {t} | " + " | ".join(cells) + " |", flush=True)


def lookup(t: int = 4096, trials: int = 32, sharpness: float = 2.0, classes: int = 16) -> None:
    rng = np.random.default_rng(1)
    d = 64
    k = rng.normal(size=(trials, t, d))
    q = rng.normal(size=(trials, t, d))
    labels = rng.integers(0, classes, size=(trials, t))
    v = np.eye(classes)[labels]  # (trials, T, classes)
    planted = rng.integers(0, t // 4, size=trials)
    q[np.arange(trials), -1] = sharpness * k[np.arange(trials), planted]
    want = labels[np.arange(trials), planted]
    runs = {
        "exact (tiled)": lambda: TILED.forward(q, k, v, is_causal=True)[0],
        f"sliding window {WINDOW}": lambda: sliding_window_attention_forward(q, k, v, WINDOW, is_causal=True)[0],
        f"sliding window {WINDOW} + 64 global": lambda: sliding_window_attention_forward(q, k, v, WINDOW, 64,
                                                                                          is_causal=True)[0],
        "linear (elu+1)": lambda: linear_attention_forward(q, k, v, is_causal=True)[0],
    }
    for m in (16, 64, 256, 1024):
        runs[f"FAVOR+ m={m}"] = (lambda m=m: linear_attention_forward(
            q, k, v, True, "favor", favor_features(m, d, backend.Generator(m)), 256)[0])
    print(f"| variant | accuracy ({trials} lookups, T = {t}) |")
    print("|---|---:|")
    for name, run in runs.items():
        got = np.argmax(run()[:, -1], axis=-1)
        print(f"| {name} | {np.mean(got == want):.2f} |", flush=True)


def favor_error(t: int = 512, d: int = 64, draws: int = 8) -> None:
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=(4, t, d)) * 0.5 for _ in range(3))
    exact, _ = scaled_dot_product_attention_forward(q, k, v)
    print(f"| random features m | mean abs error vs softmax attention: median of {draws} draws | worst draw |")
    print("|---:|---:|---:|")
    for m in (16, 64, 256, 1024, 4096):
        errors = [np.abs(linear_attention_forward(q, k, v, False, "favor",
                                                  favor_features(m, d, backend.Generator(s)))[0] - exact).mean()
                  for s in range(draws)]
        print(f"| {m} | {np.median(errors):.4f} | {np.max(errors):.4f} |", flush=True)
    elu = np.abs(linear_attention_forward(q, k, v)[0] - exact).mean()
    print(f"| (elu + 1, a different attention) | {elu:.4f} | |")
    print(f"(softmax attention's own outputs: mean abs {np.abs(exact).mean():.4f})")


def gpt_step(t: int = 8192) -> None:
    model = GPT(vocab_size=65, block_size=t, n_layer=4, n_head=4, d_model=256, dtype="float32",
                generator=backend.Generator(0))
    idx = np.random.default_rng(0).integers(0, 65, size=(1, t))
    tracemalloc.start()
    start = time.perf_counter()
    logits = model(idx)
    model.backward(np.ones_like(logits) / logits.size)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    params = sum(p.data.nbytes for p in model.parameters())
    print(f"GPT 4 x 256, T = {t}, batch 1: forward + backward {seconds:.1f} s (under tracemalloc), "
          f"peak {peak / 2**30:.2f} GiB traced (parameters {params / 2**20:.1f} MiB); a (B, H, T, T) float32 "
          f"probability matrix per layer would be {4 * t * t * 4 / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["layer", "lookup", "favor", "gpt", "all"], default="all")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2**i for i in range(8, 15)])
    parser.add_argument("--budget-gib", type=float, default=2.0,
                        help="largest stored (B, H, T, T) score matrices the reference may allocate")
    args = parser.parse_args()
    if args.part in ("layer", "all"):
        measure_layer(args.lengths, args.budget_gib)
    if args.part in ("lookup", "all"):
        lookup()
    if args.part in ("favor", "all"):
        favor_error()
    if args.part in ("gpt", "all"):
        gpt_step()


if __name__ == "__main__":
    main()
