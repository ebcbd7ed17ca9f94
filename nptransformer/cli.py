"""Argument parsing for ``python -m nptransformer``: one subcommand per job.

Each command lives with the code it drives (``gradcheck_suite.run_cli`` ...);
this module only wires names to functions, importing each lazily so that
``nptransformer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable


def _lazy(module: str, func: str) -> Callable[[Any], int]:
    def run(args: Any) -> int:
        return getattr(importlib.import_module(f"nptransformer.{module}"), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand attached."""
    parser = argparse.ArgumentParser(prog="nptransformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="commands")

    g = sub.add_parser("gradcheck", help="check every op, layer and model's backward against finite differences")
    g.add_argument("--backend", action="append", choices=["numpy", "strict", "cupy"],
                   help="backend(s) to run under (repeatable; default: numpy and strict when installed)")
    g.add_argument("--only", default=None, help="run only targets whose name contains this text")
    g.set_defaults(run=_lazy("gradcheck_suite", "run_cli"))

    e = sub.add_parser("embed", help="embed texts with a Hugging Face BERT checkpoint; print their cosine similarities")
    e.add_argument("--model", required=True, help="checkpoint directory: config.json, model.safetensors, vocab.txt")
    e.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute dtype (default float32)")
    e.add_argument("texts", nargs="+", help="the texts to compare")
    e.set_defaults(run=_lazy("pretrained", "run_embed_cli"))

    d = sub.add_parser("demo", help="the gradient-check table, then an encoder-decoder learning to reverse digits")
    d.add_argument("--steps", type=int, default=800, help="training steps of the reversal model (default 800)")
    d.add_argument("--threads", type=int, default=1, help="BLAS threads (0: BLAS's default; see docs/training.md)")
    d.set_defaults(run=_lazy("demo", "run_cli"))

    c = sub.add_parser("train-char", help="train a character-level GPT on a text file, validate, sample")
    c.add_argument("--text", required=True, help="a UTF-8 text file; its last 10%% is held out for validation")
    c.add_argument("--steps", type=int, default=1600)
    c.add_argument("--d-model", type=int, default=128)
    c.add_argument("--layers", type=int, default=4)
    c.add_argument("--heads", type=int, default=4)
    c.add_argument("--block-size", type=int, default=128)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (linear warmup, cosine decay to lr/10)")
    c.add_argument("--dropout", type=float, default=0.0)
    c.add_argument("--eval-every", type=int, default=200, help="validate (and checkpoint) every N steps")
    c.add_argument("--checkpoint", default=None, help="checkpoint file (.npz), saved at every validation")
    c.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    c.add_argument("--sample-chars", type=int, default=500, help="characters to sample at the end")
    c.add_argument("--plot", default="char_gpt_loss.png", help="loss-curve PNG (written when matplotlib is installed)")
    c.add_argument("--threads", type=int, default=1, help="BLAS threads (0: BLAS's default; see docs/training.md)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(run=_lazy("char_gpt", "run_cli"))

    b = sub.add_parser("bench", help="time a GPT training step (and PyTorch's with --compare-torch); docs/performance.md")
    b.add_argument("--vocab-size", type=int, default=512)
    b.add_argument("--block-size", type=int, default=128)
    b.add_argument("--layers", dest="n_layer", type=int, default=4)
    b.add_argument("--heads", dest="n_head", type=int, default=4)
    b.add_argument("--d-model", type=int, default=256)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: block size)")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    b.add_argument("--dropout", type=float, default=0.0)
    b.add_argument("--steps", type=int, default=10, help="timed steps (default 10); the median is reported")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    b.add_argument("--backend", choices=["numpy", "strict", "cupy"], default="numpy")
    b.add_argument("--checkpoint-activations", action="store_true", help="recompute each block's forward in backward")
    b.add_argument("--compare-torch", action="store_true", help="race the same model in PyTorch eager, same threads")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for nptransformer (set_num_threads), BLAS and torch (default: BLAS's own count)")
    b.add_argument("--no-pool", dest="pool", action="store_false",
                   help="keep nptransformer's ops on one thread (BLAS still uses --threads)")
    b.add_argument("--no-retain-memory", dest="retain_memory", action="store_false",
                   help="leave malloc's defaults (freed memory returned to the OS; see nptransformer.memory)")
    b.add_argument("--gemm-size", type=int, default=2048, help="n of the n^3 matmul that measures the GEMM peak")
    b.add_argument("--profile", action="store_true", help="also print the time per op")
    b.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    b.add_argument("--no-generation", dest="generation", action="store_false", help="skip inference tokens/s")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", default=None, help="also write every number to this JSON file")
    b.set_defaults(run=_lazy("bench", "run_cli"))
    return parser
