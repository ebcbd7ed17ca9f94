"""Argument parsing for ``python -m nptransformer``: one subcommand per program of :mod:`nptransformer.apps`.

Each command lives in its own module (``apps.gradcheck.run_cli`` ...) and
takes its defaults from :mod:`.defaults`; this module only wires names to
functions, importing each lazily so that ``nptransformer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Any, Callable

from .defaults import PRECISIONS, BenchConfig, Demo, Embed, Generate, Serve, TrainChar


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (checked before any work starts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float, low_inclusive: bool) -> Callable[[str], float]:
    """An argparse type: a number in [low, high) (or (low, high) unless ``low_inclusive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((value >= low if low_inclusive else value > low) and value < high):
            raise argparse.ArgumentTypeError(f"expected a number in {'[' if low_inclusive else '('}{low}, {high}), "
                                             f"got {value}")
        return value

    return parse


_fraction = _float_in(0.0, 1.0, low_inclusive=True)  # a probability that is not 1: dropout
_positive_float = _float_in(0.0, float("inf"), low_inclusive=False)  # a learning rate


def _existing_file(text: str) -> str:
    """An argparse type: a path to a readable file."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text!r}")
    return text


def _writable_path(text: str) -> str:
    """An argparse type: a file path whose directory exists and is writable (checked before training starts)."""
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"the directory of {text!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into the directory of {text!r}")
    return text


def _lazy(module: str, func: str = "run_cli") -> Callable[[Any], int]:
    def run(args: Any) -> int:
        return getattr(importlib.import_module(f"nptransformer.apps.{module}"), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand attached."""
    parser = argparse.ArgumentParser(prog="nptransformer", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(title="commands", dest="command")

    g = sub.add_parser("gradcheck", help="check every op, kernel, layer and model's backward against finite differences")
    g.add_argument("--backend", action="append", choices=["numpy", "strict", "cupy"],
                   help="backend(s) to run under (repeatable; default: numpy and strict when installed)")
    g.add_argument("--only", default=None, help="run only targets whose name contains this text")
    g.add_argument("--module", action="append", metavar="NAME",
                   help="import this module (dotted name or .py path) first, so the ops it registers are checked")
    g.set_defaults(run=_lazy("gradcheck"))

    e = sub.add_parser("embed", help="embed texts with a Hugging Face BERT checkpoint; print their cosine similarities")
    e.add_argument("--model", required=True, help="checkpoint directory: config.json, model.safetensors, vocab.txt")
    e.add_argument("--dtype", choices=["float32", "float64"], default=Embed.dtype, help="compute dtype")
    e.add_argument("texts", nargs="+", help="the texts to compare")
    e.set_defaults(run=_lazy("embed"))

    gen = Generate
    n = sub.add_parser("generate", help="continue a prompt with a GPT-2 checkpoint, streaming the text (docs/textgen.md)")
    n.add_argument("--model", required=True, help="GPT-2 checkpoint directory or Hugging Face name (cache or hub)")
    n.add_argument("--prompt", required=True, help="the text to continue")
    n.add_argument("--max-new-tokens", type=int, default=gen.max_new_tokens,
                   help=f"at most this many tokens ({gen.max_new_tokens}), within the model's context")
    n.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    n.add_argument("--temperature", type=float, default=gen.temperature, help="sampling temperature")
    n.add_argument("--top-k", type=int, default=None, help="sample among the k most probable tokens")
    n.add_argument("--top-p", type=float, default=None, help="sample within the nucleus of mass p")
    n.add_argument("--seed", type=int, default=None, help="seed of the sampling draws")
    n.add_argument("--num-beams", type=int, default=gen.num_beams,
                   help="beam search with this many beams (printed at the end, not streamed)")
    n.add_argument("--length-penalty", type=float, default=gen.length_penalty, help="beam search's GNMT alpha")
    n.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    n.add_argument("--dtype", choices=["float32", "float64"], default=gen.dtype, help="compute dtype")
    n.set_defaults(run=_lazy("generate"))

    sv = Serve
    s = sub.add_parser("serve", help="serve a checkpoint over HTTP: BERT embeddings or GPT-2 generation (docs/serving.md)")
    s.add_argument("--model", required=True, help="BERT or GPT-2 checkpoint directory or Hugging Face name")
    s.add_argument("--host", default=sv.host, help=f"address to listen on ({sv.host})")
    s.add_argument("--port", type=int, default=sv.port)
    s.add_argument("--max-batch", type=int, default=sv.max_batch, help="most requests in one forward pass")
    s.add_argument("--max-wait-ms", type=float, default=sv.max_wait_ms,
                   help="how long a batch waits for more requests after its first")
    s.add_argument("--max-queue", type=int, default=sv.max_queue, help="waiting requests before answering 503")
    s.add_argument("--cache-size", type=int, default=sv.cache_size, help="results kept in the LRU cache (0: off)")
    s.add_argument("--dtype", choices=["float32", "float64"], default=sv.dtype, help="compute dtype")
    s.add_argument("--threads", type=int, default=sv.threads, help="BLAS threads (0: BLAS's default; docs/serving.md)")
    s.set_defaults(run=_lazy("serve"))

    d = sub.add_parser("demo", help="the gradient-check table, then an encoder-decoder learning to reverse digits")
    d.add_argument("--steps", type=_int_at_least(1), default=Demo.steps, help=f"training steps of the reversal model ({Demo.steps})")
    d.add_argument("--threads", type=_int_at_least(0), default=Demo.threads, help="BLAS threads (0: BLAS's default; docs/training.md)")
    d.set_defaults(run=_lazy("demo"))

    t = TrainChar
    c = sub.add_parser("train-char", help="train a character-level GPT on a text file, validate, sample")
    c.add_argument("--text", required=True, type=_existing_file, help="a UTF-8 text file; its last 10%% is held out for validation")
    c.add_argument("--steps", type=_int_at_least(1), default=t.steps)
    c.add_argument("--d-model", type=_int_at_least(1), default=t.d_model)
    c.add_argument("--layers", type=_int_at_least(1), default=t.layers)
    c.add_argument("--heads", type=_int_at_least(1), default=t.heads)
    c.add_argument("--block-size", type=_int_at_least(1), default=t.block_size)
    c.add_argument("--batch-size", type=_int_at_least(1), default=t.batch_size)
    c.add_argument("--lr", type=_positive_float, default=t.lr, help="peak learning rate (linear warmup, cosine decay to lr/10)")
    c.add_argument("--dropout", type=_fraction, default=t.dropout)
    c.add_argument("--eval-every", type=_int_at_least(1), default=t.eval_every, help="validate (and checkpoint) every N steps")
    c.add_argument("--checkpoint", default=None, type=_writable_path, help="checkpoint file (.npz), saved at every validation")
    c.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    c.add_argument("--sample-chars", type=_int_at_least(0), default=t.sample_chars, help="characters to sample at the end")
    c.add_argument("--plot", default=t.plot, help="loss-curve PNG (written when matplotlib is installed)")
    c.add_argument("--threads", type=_int_at_least(0), default=t.threads, help="BLAS threads (0: BLAS's default; docs/training.md)")
    c.add_argument("--seed", type=int, default=t.seed)
    c.add_argument("--parallel", choices=["none", "data", "tensor", "pipeline"], default=t.parallel,
                   help="split training across the ranks of mpiexec -n N (docs/distributed.md)")
    c.add_argument("--micro-batches", type=_int_at_least(1), default=t.micro_batches,
                   help="micro-batches per batch with --parallel pipeline")
    c.add_argument("--zero", action="store_true",
                   help="with --parallel data: split AdamW's state across the ranks (ZeRO stage 1)")
    c.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float16: float16 compute, float32 master weights; mixed: the same with loss scaling; "
                        "bfloat16: every op's result rounded to bfloat16 (docs/precision-and-compression.md)")
    c.set_defaults(run=_lazy("train_char"))

    b = sub.add_parser("bench", help="time a GPT training step (and PyTorch's with --compare-torch); docs/performance.md")
    cfg = BenchConfig()
    b.add_argument("--vocab-size", type=_int_at_least(1), default=cfg.vocab_size)
    b.add_argument("--block-size", type=_int_at_least(1), default=cfg.block_size)
    b.add_argument("--layers", dest="n_layer", type=_int_at_least(1), default=cfg.n_layer)
    b.add_argument("--heads", dest="n_head", type=_int_at_least(1), default=cfg.n_head)
    b.add_argument("--d-model", type=_int_at_least(1), default=cfg.d_model)
    b.add_argument("--batch-size", type=_int_at_least(1), default=cfg.batch_size)
    b.add_argument("--seq-len", type=_int_at_least(1), default=cfg.seq_len, help="tokens per sequence (default: block size)")
    b.add_argument("--dtype", choices=["float32", "float64"], default=cfg.dtype)
    b.add_argument("--dropout", type=_fraction, default=cfg.dropout)
    b.add_argument("--steps", type=_int_at_least(1), default=cfg.steps, help="timed steps; the median is reported")
    b.add_argument("--warmup", type=_int_at_least(0), default=cfg.warmup, help="untimed steps first")
    b.add_argument("--backend", choices=["numpy", "strict", "cupy"], default=cfg.backend)
    b.add_argument("--checkpoint-activations", action="store_true", help="recompute each block's forward in backward")
    b.add_argument("--compare-torch", action="store_true", help="race the same model in PyTorch eager, same threads")
    b.add_argument("--threads", type=_int_at_least(1), default=cfg.threads,
                   help="threads for nptransformer (set_num_threads), BLAS and torch (default: BLAS's own count)")
    b.add_argument("--no-pool", dest="pool", action="store_false",
                   help="keep nptransformer's ops on one thread (BLAS still uses --threads)")
    b.add_argument("--no-retain-memory", dest="retain_memory", action="store_false",
                   help="leave malloc's defaults (freed memory returned to the OS; see nptransformer.memory)")
    b.add_argument("--reference", action="store_true",
                   help="run nptransformer's reference ops only (no kernels): what the engine adds")
    b.add_argument("--gemm-size", type=_int_at_least(1), default=cfg.gemm_size, help="n of the n^3 matmul that measures the GEMM peak")
    b.add_argument("--profile", action="store_true", help="also print the time per op")
    b.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    b.add_argument("--no-generation", dest="generation", action="store_false", help="skip inference tokens/s")
    b.add_argument("--no-jobs", dest="jobs", action="store_false",
                   help="skip the encoder (MiniLM-shaped embeddings) and decode jobs")
    b.add_argument("--seed", type=int, default=cfg.seed)
    b.add_argument("--json", default=None, help="also write every number to this JSON file")
    b.set_defaults(run=_lazy("bench"))
    return parser
