"""Argument parsing for ``python -m nptransformer``: one subcommand per program of :mod:`nptransformer.apps`.

Each command lives in its own module (``apps.gradcheck.run_cli`` ...) and
takes its defaults from :mod:`.defaults`; this module only wires names to
functions, importing each lazily so that ``nptransformer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable

from .defaults import BenchConfig, Demo, Embed, TrainChar


def _lazy(module: str, func: str = "run_cli") -> Callable[[Any], int]:
    def run(args: Any) -> int:
        return getattr(importlib.import_module(f"nptransformer.apps.{module}"), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand attached."""
    parser = argparse.ArgumentParser(prog="nptransformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="commands")

    g = sub.add_parser("gradcheck", help="check every op, kernel, layer and model's backward against finite differences")
    g.add_argument("--backend", action="append", choices=["numpy", "strict", "cupy"],
                   help="backend(s) to run under (repeatable; default: numpy and strict when installed)")
    g.add_argument("--only", default=None, help="run only targets whose name contains this text")
    g.set_defaults(run=_lazy("gradcheck"))

    e = sub.add_parser("embed", help="embed texts with a Hugging Face BERT checkpoint; print their cosine similarities")
    e.add_argument("--model", required=True, help="checkpoint directory: config.json, model.safetensors, vocab.txt")
    e.add_argument("--dtype", choices=["float32", "float64"], default=Embed.dtype, help="compute dtype")
    e.add_argument("texts", nargs="+", help="the texts to compare")
    e.set_defaults(run=_lazy("embed"))

    d = sub.add_parser("demo", help="the gradient-check table, then an encoder-decoder learning to reverse digits")
    d.add_argument("--steps", type=int, default=Demo.steps, help=f"training steps of the reversal model ({Demo.steps})")
    d.add_argument("--threads", type=int, default=Demo.threads, help="BLAS threads (0: BLAS's default; docs/training.md)")
    d.set_defaults(run=_lazy("demo"))

    t = TrainChar
    c = sub.add_parser("train-char", help="train a character-level GPT on a text file, validate, sample")
    c.add_argument("--text", required=True, help="a UTF-8 text file; its last 10%% is held out for validation")
    c.add_argument("--steps", type=int, default=t.steps)
    c.add_argument("--d-model", type=int, default=t.d_model)
    c.add_argument("--layers", type=int, default=t.layers)
    c.add_argument("--heads", type=int, default=t.heads)
    c.add_argument("--block-size", type=int, default=t.block_size)
    c.add_argument("--batch-size", type=int, default=t.batch_size)
    c.add_argument("--lr", type=float, default=t.lr, help="peak learning rate (linear warmup, cosine decay to lr/10)")
    c.add_argument("--dropout", type=float, default=t.dropout)
    c.add_argument("--eval-every", type=int, default=t.eval_every, help="validate (and checkpoint) every N steps")
    c.add_argument("--checkpoint", default=None, help="checkpoint file (.npz), saved at every validation")
    c.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    c.add_argument("--sample-chars", type=int, default=t.sample_chars, help="characters to sample at the end")
    c.add_argument("--plot", default=t.plot, help="loss-curve PNG (written when matplotlib is installed)")
    c.add_argument("--threads", type=int, default=t.threads, help="BLAS threads (0: BLAS's default; docs/training.md)")
    c.add_argument("--seed", type=int, default=t.seed)
    c.set_defaults(run=_lazy("train_char"))

    b = sub.add_parser("bench", help="time a GPT training step (and PyTorch's with --compare-torch); docs/performance.md")
    cfg = BenchConfig()
    b.add_argument("--vocab-size", type=int, default=cfg.vocab_size)
    b.add_argument("--block-size", type=int, default=cfg.block_size)
    b.add_argument("--layers", dest="n_layer", type=int, default=cfg.n_layer)
    b.add_argument("--heads", dest="n_head", type=int, default=cfg.n_head)
    b.add_argument("--d-model", type=int, default=cfg.d_model)
    b.add_argument("--batch-size", type=int, default=cfg.batch_size)
    b.add_argument("--seq-len", type=int, default=cfg.seq_len, help="tokens per sequence (default: block size)")
    b.add_argument("--dtype", choices=["float32", "float64"], default=cfg.dtype)
    b.add_argument("--dropout", type=float, default=cfg.dropout)
    b.add_argument("--steps", type=int, default=cfg.steps, help="timed steps; the median is reported")
    b.add_argument("--warmup", type=int, default=cfg.warmup, help="untimed steps first")
    b.add_argument("--backend", choices=["numpy", "strict", "cupy"], default=cfg.backend)
    b.add_argument("--checkpoint-activations", action="store_true", help="recompute each block's forward in backward")
    b.add_argument("--compare-torch", action="store_true", help="race the same model in PyTorch eager, same threads")
    b.add_argument("--threads", type=int, default=cfg.threads,
                   help="threads for nptransformer (set_num_threads), BLAS and torch (default: BLAS's own count)")
    b.add_argument("--no-pool", dest="pool", action="store_false",
                   help="keep nptransformer's ops on one thread (BLAS still uses --threads)")
    b.add_argument("--no-retain-memory", dest="retain_memory", action="store_false",
                   help="leave malloc's defaults (freed memory returned to the OS; see nptransformer.memory)")
    b.add_argument("--reference", action="store_true",
                   help="run nptransformer's reference ops only (no kernels): what the engine adds")
    b.add_argument("--gemm-size", type=int, default=cfg.gemm_size, help="n of the n^3 matmul that measures the GEMM peak")
    b.add_argument("--profile", action="store_true", help="also print the time per op")
    b.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    b.add_argument("--no-generation", dest="generation", action="store_false", help="skip inference tokens/s")
    b.add_argument("--seed", type=int, default=cfg.seed)
    b.add_argument("--json", default=None, help="also write every number to this JSON file")
    b.set_defaults(run=_lazy("bench"))
    return parser
