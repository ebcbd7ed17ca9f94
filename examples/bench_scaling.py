"""Step time and peak memory of a GPT training step against sequence length and width, ours and PyTorch's.

Runs ``nptransformer.apps.bench`` over two sweeps and writes a JSON file of every
number and a PNG of four panels (docs/figures/scaling.png in the docs):

- sequence length T = 64 ... 1024 at d_model 256, with B*T = 2048 tokens a
  step, so the weight GEMMs (O(T d^2) per sequence, the same FLOPs per token
  at every T) stay fixed and only the attention products (O(T^2 d)) grow;
- d_model = 128 ... 1024 at T = 128, B = 16, where the GEMMs grow as d^2.

    python examples/bench_scaling.py --out docs/figures/scaling --threads 1   # about 15 minutes
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nptransformer.apps import bench  # noqa: E402

SEQ_LENS = (64, 128, 256, 512, 1024)
WIDTHS = (128, 256, 512, 1024)
TOKENS = 2048


def sweep(steps: int, torch: bool, threads: int | None) -> dict:
    """Every config's bench result, keyed by sweep name."""
    configs = {
        "seq_len": [dict(block_size=T, batch_size=TOKENS // T, d_model=256) for T in SEQ_LENS],
        "d_model": [dict(block_size=128, batch_size=16, d_model=C, n_head=max(4, C // 64)) for C in WIDTHS],
    }
    results: dict = {}
    for name, sizes in configs.items():
        results[name] = []
        for size in sizes:
            cfg = bench.BenchConfig(**size, steps=steps, warmup=1, compare_torch=torch, generation=False,
                                    threads=threads)
            result = bench.run(cfg)
            print(bench.format_report(result), "\n", flush=True)
            results[name].append(result)
    return results


def plot(results: dict, path: str) -> None:
    """Four panels: time and memory against T, time and memory against d_model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for col, (name, label) in enumerate((("seq_len", "sequence length T (B*T = 2048 tokens a step)"),
                                         ("d_model", "d_model (T = 128, B = 16)"))):
        rows = results[name]
        x = [r["config"]["block_size"] if name == "seq_len" else r["config"]["d_model"] for r in rows]
        time_ax, mem_ax = axes[0][col], axes[1][col]
        for racer, style, who in (("ours", "o-", "nptransformer"), ("torch", "s--", "PyTorch eager")):
            if racer in rows[0]["seconds"]:
                time_ax.plot(x, [1e3 * r["seconds"][racer] for r in rows], style, label=who)
                mem_ax.plot(x, [r["memory"][racer]["rss_mib"] for r in rows], style, label=who)
        # what the FLOP count alone predicts at the GEMM peak (the median over the sweep's
        # measurements), split into its two terms
        peak = sorted(r["gemm_gflops"] for r in rows)[len(rows) // 2] * 1e9
        gemm_ms, attn_ms = [], []
        for r in rows:
            c = r["config"]
            T, C, L, tokens = c["block_size"], c["d_model"], c["n_layer"], c["block_size"] * c["batch_size"]
            attention = 12 * L * T * C * tokens
            gemm_ms.append(1e3 * (r["flops_per_step"] - attention) / peak)
            attn_ms.append(1e3 * attention / peak)
        time_ax.plot(x, gemm_ms, ":", color="gray", label="weight GEMMs at GEMM peak (O(T d^2) a sequence)")
        time_ax.plot(x, attn_ms, "-.", color="gray", label="attention products at GEMM peak (O(T^2 d))")
        for ax, ylabel in ((time_ax, "training step (ms)"), (mem_ax, "peak memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    threads = results["seq_len"][0]["threads"]
    fig.suptitle(f"GPT training step, 4 layers, float32, {threads} thread{'s' if threads > 1 else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="scaling", help="writes OUT.json and OUT.png")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    parser.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: BLAS's own)")
    parser.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.json")
    args = parser.parse_args()
    if args.replot:
        with open(args.out + ".json") as f:
            results = json.load(f)
    else:
        results = sweep(args.steps, args.torch, args.threads)
        with open(args.out + ".json", "w") as f:
            json.dump(results, f, indent=1)
    plot(results, args.out + ".png")


if __name__ == "__main__":
    main()
