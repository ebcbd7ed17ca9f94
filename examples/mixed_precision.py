"""float32 vs float16 without loss scaling vs float16 with a GradScaler vs bfloat16, on the char GPT.

    python examples/mixed_precision.py --precision mixed --steps 300

Prints the validation loss every ``--eval-every`` steps, the steps the
scaler skipped, and how many gradient entries float16 loses to underflow
(entries that are non-zero in a float32 backward but exactly zero in the
float16 one, on one fixed batch, at the start and at the end of training).
docs/precision-and-compression.md has the measured numbers.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from nptransformer.apps.defaults import PRECISIONS
from nptransformer.apps.train_char import train_char_gpt
from nptransformer.backend import Generator, to_numpy
from nptransformer.data import char_batch
from nptransformer.kernels.bfloat16 import round_to_bfloat16
from nptransformer.nn import CrossEntropyLoss, MixedPrecision
from nptransformer.tokenizers import CharTokenizer

TEXT = os.path.join(os.path.dirname(__file__), "data", "shakespeare.txt")


def underflow(model, x, y, scale: float, dtype: str = "float16") -> tuple[int, int, int]:
    """(entries lost, non-zero float32 entries, dlogits entries lost) for one ``dtype`` backward at ``scale``."""
    crit = CrossEntropyLoss()
    crit(model(x), y)
    model.backward(crit.backward())
    ref = [to_numpy(p.grad).copy() for p in model.parameters()]
    model.zero_grad()
    mp = MixedPrecision(model, dtype, type("S", (), {"scale": scale})())
    crit(mp(x), y)
    dlogits = crit.backward()
    mp.backward(dlogits)
    half = [to_numpy(p.grad) for p in model.parameters()]
    model.zero_grad()
    lost = sum(int(np.sum((r != 0) & (h == 0))) for r, h in zip(ref, half))
    nonzero = sum(int(np.sum(r != 0)) for r in ref)
    d = (to_numpy(dlogits) * scale).astype(np.float32)
    narrow = round_to_bfloat16(d) if dtype == "bfloat16" else d.astype(np.float16)
    return lost, nonzero, int(np.sum((d != 0) & (narrow == 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=PRECISIONS, default="mixed")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--chars", type=int, default=300_000, help="first N characters of the text")
    a = ap.parse_args()
    text = open(TEXT, encoding="utf-8").read()[: a.chars]
    cfg = dict(d_model=64, n_layer=2, n_head=4, block_size=64, batch_size=16, lr=3e-3, warmup=30)
    model, tok, trainer = train_char_gpt(text, steps=a.steps, eval_every=a.eval_every, log_every=50,
                                         precision=a.precision, **cfg)
    vals = [(h["step"], round(h["val_loss"], 4)) for h in trainer.history if "val_loss" in h]
    print(f"precision {a.precision}: validation loss by step {vals}")
    if trainer.scaler is not None:
        print(f"scaler: final scale {trainer.scaler.scale:g}; skipped steps {trainer.scaler.skipped_steps}")
    ids = np.asarray(CharTokenizer(text).encode(text), dtype=np.int64)
    (x,), y = char_batch(ids, cfg["block_size"], cfg["batch_size"], Generator(123))
    for dtype, scale in (("float16", 1.0), ("float16", 2.0 ** 16 if trainer.scaler is None else trainer.scaler.scale),
                         ("bfloat16", 1.0)):
        lost, nonzero, dl = underflow(model, x, y, scale, dtype)
        print(f"underflow at end, {dtype}, loss scale {scale:g}: {lost} of {nonzero} non-zero gradient entries "
              f"lost ({100 * lost / nonzero:.2f}%); dlogits entries flushed to zero: {dl}")


if __name__ == "__main__":
    main()
