"""``nptransformer train-char --text FILE``: a character-level GPT, trained, validated and sampled.

The text's characters are the vocabulary
(:class:`~nptransformer.tokenizers.CharTokenizer`); the first 90% trains,
the last 10% is held out. Training draws random windows of ``block_size``
characters (:func:`~nptransformer.data.char_batch`); validation is the mean
loss, in nats per character, over the whole held-out split cut into
consecutive windows, so it is the same number every time it is computed.
examples/char_gpt.py runs this on Shakespeare; docs/training.md has the
measured results.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any, TextIO

import numpy as np

from .. import backend
from .._files import read_text
from ..backend import Generator, to_numpy
from ..data import char_batch
from ..generation.inference import inference
from ..models import GPT
from ..nn import CrossEntropyLoss, MixedPrecision
from ..optim import AdamW, GradScaler, WarmupCosine, param_groups_for_weight_decay
from ..tokenizers import CharTokenizer
from ..training import Trainer, TrainingDiverged, blas_threads, format_duration
from .defaults import PRECISIONS


def split_text(text: str, val_fraction: float = 0.1) -> tuple[CharTokenizer, np.ndarray, np.ndarray]:
    """(tokenizer, train ids, validation ids): the last ``val_fraction`` of the text is held out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    tokenizer = CharTokenizer(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    n_train = int(len(ids) * (1 - val_fraction))
    return tokenizer, ids[:n_train], ids[n_train:]


def validation_loss(model: Any, ids: np.ndarray, block_size: int, batch_size: int = 64, parallel: Any = None) -> float:
    """Mean next-character loss (nats) over ``ids`` cut into consecutive windows of ``block_size``.

    Runs in eval mode (dropout off) under no_grad; the model's modes are
    restored. ``parallel``: the pipeline-parallel mode whose stage ``model``
    is (each batch then goes through the stages); every rank must call it.
    """
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].reshape(n, block_size)
    y = ids[1: n * block_size + 1].reshape(n, block_size)
    criterion, total = CrossEntropyLoss(reduction="sum"), 0.0
    with inference(model, model.parameters()[0].data):
        for i in range(0, n, batch_size):
            xb, yb = backend.asarray(x[i:i + batch_size], "int64"), backend.asarray(y[i:i + batch_size], "int64")
            if hasattr(parallel, "eval_loss"):
                total += parallel.eval_loss(criterion, xb, yb)
            else:
                total += float(to_numpy(criterion(model(xb), yb)))
    return total / (n * block_size)


def train_char_gpt(text: str, *, d_model: int = 128, n_layer: int = 4, n_head: int = 4, block_size: int = 128,
                   batch_size: int = 32, steps: int = 1600, lr: float = 2e-3, warmup: int = 100,
                   weight_decay: float = 0.1, dropout: float = 0.0, eval_every: int = 200, log_every: int = 25,
                   checkpoint: str | None = None, resume: bool = False, seed: int = 0,
                   out: TextIO | None = None, parallel: str | None = None, micro_batches: int = 4,
                   zero: bool = False, precision: str = "float32") -> tuple[GPT, CharTokenizer, Trainer]:
    """Train a GPT on ``text`` with AdamW and warmup + cosine decay; returns (model, tokenizer, trainer).

    ``trainer.history`` holds the training loss per ``log_every`` steps and
    the validation loss (``val_loss``) every ``eval_every`` steps.
    ``parallel``: "data", "tensor" or "pipeline" to split the work across
    the ranks of ``mpiexec -n N`` (:mod:`nptransformer.distributed`; the
    strategy is ``trainer.parallel``, and the model returned is split: use
    ``trainer.parallel.full_model(model)`` for the whole one). ``zero``
    (data parallelism only): AdamW's state split across the ranks (ZeRO stage 1).
    ``precision``: "float32"; "float16" (forward and backward in float16,
    float32 master weights, no loss scaling); "mixed" (the same with a
    :class:`~nptransformer.optim.GradScaler`, ``trainer.scaler``);
    "bfloat16" (forward and backward rounded to bfloat16, float32 master
    weights; bfloat16's range needs no loss scaling).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "float32" and parallel not in (None, "none"):
        raise ValueError(f"precision={precision!r} runs in one process; got parallel={parallel!r}")
    tokenizer, train_ids, val_ids = split_text(text)
    backend.manual_seed(seed)
    model = GPT(tokenizer.vocab_size, block_size, n_layer, n_head, d_model, dropout=dropout,
                generator=Generator(seed))
    strategy = None
    if parallel not in (None, "none"):
        from ..distributed import parallelize  # needs mpi4py for more than one rank: imported when asked for

        strategy = parallelize(parallel, model, micro_batches=micro_batches, seed=seed)
    net = model if strategy is None else strategy.local_model(model)
    scaler = GradScaler() if precision == "mixed" else None
    if precision != "float32":
        net = MixedPrecision(net, "bfloat16" if precision == "bfloat16" else "float16", scaler)
    groups = param_groups_for_weight_decay(net, weight_decay)
    if zero:
        if parallel != "data":
            raise ValueError(f"zero (ZeRO stage 1) needs parallel='data', got parallel={parallel!r}")
        from ..distributed import ZeroRedundancyOptimizer

        optimizer = ZeroRedundancyOptimizer(groups, AdamW, strategy.comm, lr=lr, betas=(0.9, 0.99))
    else:
        optimizer = AdamW(groups, lr=lr, betas=(0.9, 0.99))
    schedule = WarmupCosine(optimizer, warmup_steps=min(warmup, steps // 10), total_steps=steps, min_lr=lr / 10)
    trainer = Trainer(net, optimizer, CrossEntropyLoss(),
                      lambda g: char_batch(train_ids, block_size, batch_size, g), schedule=schedule,
                      max_grad_norm=1.0, generator=Generator(seed + 1), checkpoint=checkpoint, out=out,
                      eval_fn=lambda m: validation_loss(m, val_ids, block_size, parallel=strategy), parallel=strategy,
                      scaler=scaler)
    trainer.fit(steps, log_every=log_every, eval_every=eval_every, checkpoint_every=eval_every if checkpoint else None,
                resume=resume)
    return model, tokenizer, trainer


def plot_losses(history: list[dict[str, float]], path: str) -> bool:
    """Training and validation loss against step, as a PNG; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train (mean over log interval)"), ("val_loss", "validation (held-out 10%)")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if key == "val_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_cli(args: argparse.Namespace) -> int:
    """Train, report the best validation loss and the wall time, plot, and print a sample."""
    text = read_text(args.text, "the training text")
    start, cpu_start = time.perf_counter(), time.process_time()
    parallel = getattr(args, "parallel", "none")
    is_main = True
    with contextlib.ExitStack() as stack:
        if parallel != "none":
            from ..distributed import Communicator, abort_on_error

            comm = Communicator.world()
            is_main = comm.rank == 0
            stack.enter_context(abort_on_error(comm))  # one rank fails: all stop, none hangs
        try:
            with blas_threads(args.threads or None):
                model, tokenizer, trainer = train_char_gpt(
                    text, d_model=args.d_model, n_layer=args.layers, n_head=args.heads, block_size=args.block_size,
                    batch_size=args.batch_size, steps=args.steps, lr=args.lr, dropout=args.dropout,
                    eval_every=args.eval_every, checkpoint=args.checkpoint, resume=args.resume, seed=args.seed,
                    parallel=parallel, micro_batches=getattr(args, "micro_batches", 4),
                    zero=getattr(args, "zero", False), precision=getattr(args, "precision", "float32"))
                if parallel != "none":
                    model = trainer.parallel.full_model(model)  # every rank takes part; rank 0 gets the model
                    if not is_main:
                        return 0
                # A sample starts where the text's lines start; a text without a newline starts from its first character.
                prompt = backend.asarray(np.asarray([tokenizer.encode("\n" if "\n" in text else text[0])]), "int64")
                sample = model.generate(prompt, args.sample_chars, do_sample=True, temperature=0.8, top_k=20,
                                        seed=args.seed, crop=True)
        except TrainingDiverged as e:
            if is_main:  # every rank saw the same global loss
                print(f"\nstopped: {e}")
            return 1
    vals = [h for h in trainer.history if "val_loss" in h]
    best = min(vals, key=lambda h: h["val_loss"])
    print(f"\n{model.num_parameters():,} parameters; best validation loss {best['val_loss']:.4f} nats/char at step "
          f"{best['step']}; final {vals[-1]['val_loss']:.4f}; wall time {format_duration(time.perf_counter() - start)} "
          f"(CPU time {format_duration(time.process_time() - cpu_start)})")
    if args.plot and plot_losses(trainer.history, args.plot):
        print(f"loss curves: {os.path.abspath(args.plot)}")
    print("\n--- sample (temperature 0.8, top-k 20) ---")
    print(tokenizer.decode(to_numpy(sample)[0, 1:]))
    return 0
