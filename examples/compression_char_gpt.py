"""INT8 post-training quantization, quantization-aware training and distillation of the char GPT.

    python examples/compression_char_gpt.py --workdir /tmp/compress

1. trains the float32 teacher (cached in --workdir);
2. INT8 table: file size, weights in memory, peak forward memory, logit
   error, validation loss and forward time for float32, INT8 (int32
   accumulation) and INT8 weights with a float GEMM ("dequantize");
3. QAT: fine-tunes the teacher with fake-quantized Linear layers, then
   quantizes it, against post-training quantization of the same teacher
   fine-tuned in float for the same steps;
4. distillation: a student a quarter of the teacher's size trained on the
   teacher's softened outputs, against the same student from scratch.

docs/precision-and-compression.md holds the measured numbers.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from _measure import median_time, peak_memory, weight_bytes
from nptransformer import backend
from nptransformer.apps.train_char import split_text, validation_loss
from nptransformer.backend import Generator
from nptransformer.data import char_batch
from nptransformer.generation.inference import inference
from nptransformer.io import load_checkpoint, save_checkpoint
from nptransformer.models import GPT
from nptransformer.nn import CrossEntropyLoss, DistillationLoss, Module, prepare_qat, quantize_dynamic
from nptransformer.optim import AdamW, WarmupCosine, param_groups_for_weight_decay
from nptransformer.quantized_io import save_quantized
from nptransformer.training import Trainer

TEXT = os.path.join(os.path.dirname(__file__), "data", "shakespeare.txt")
TEACHER = dict(n_layer=4, n_head=4, d_model=128)
STUDENT = dict(n_layer=4, n_head=4, d_model=64)  # about a quarter of the teacher's parameters
BLOCK, BATCH = 64, 16


def train(model, train_ids, val_ids, steps, lr, criterion=None, seed=1, wrap=None):
    """AdamW + warmup/cosine on random windows; returns the final validation loss of ``model``."""
    net = model if wrap is None else wrap
    opt = AdamW(param_groups_for_weight_decay(net, 0.1), lr=lr, betas=(0.9, 0.99))
    sched = WarmupCosine(opt, warmup_steps=max(1, steps // 10), total_steps=steps, min_lr=lr / 10)
    trainer = Trainer(net, opt, criterion or CrossEntropyLoss(), lambda g: char_batch(train_ids, BLOCK, BATCH, g),
                      schedule=sched, generator=Generator(seed), out=open(os.devnull, "w"))
    trainer.fit(steps, log_every=50)
    return validation_loss(model, val_ids, BLOCK)


def sample(model, tok, n=200):
    prompt = backend.asarray(np.asarray([tok.encode("\n")]), "int64")
    return tok.decode(model.generate(prompt, n, do_sample=True, temperature=0.8, top_k=20, seed=0, crop=True)[0, 1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="compress-run")
    ap.add_argument("--chars", type=int, default=300_000)
    ap.add_argument("--steps", type=int, default=400, help="teacher and student training steps")
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--bits", type=int, default=8, help="weight and activation bits for the QAT comparison")
    ap.add_argument("--only", choices=("ptq", "qat", "distill"), nargs="*", default=["ptq", "qat", "distill"])
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    tok, train_ids, val_ids = split_text(open(TEXT, encoding="utf-8").read()[: a.chars])
    V = tok.vocab_size
    teacher = GPT(V, BLOCK, **TEACHER, generator=Generator(0))
    ckpt = os.path.join(a.workdir, "teacher.npz")
    if os.path.exists(ckpt):
        load_checkpoint(ckpt, teacher)
    else:
        train(teacher, train_ids, val_ids, a.steps, 3e-3)
        save_checkpoint(ckpt, teacher)
    teacher.eval()
    f32_val = validation_loss(teacher, val_ids, BLOCK)
    print(f"teacher: {teacher.num_parameters():,} parameters, validation loss {f32_val:.4f}")

    if "ptq" in a.only:
        x = backend.asarray(val_ids[: BATCH * BLOCK].reshape(BATCH, BLOCK), "int64")
        with inference(teacher, teacher.wte.weight.data):
            ref = teacher(x)
            f32_file = os.path.join(a.workdir, "float32.npz")
            save_checkpoint(f32_file, teacher)
            q8_file = os.path.join(a.workdir, "int8.npz")
            save_quantized(q8_file, quantize_dynamic(teacher))
            print("| model | file bytes | weights in memory | peak forward memory | max abs logit error "
                  "| validation loss | forward (16x64) |")
            for name, m in (("float32", teacher), ("INT8 (int32 accumulate)", quantize_dynamic(teacher)),
                            ("INT8 weights, float GEMM", quantize_dynamic(teacher, path="dequantize"))):
                size = os.path.getsize(f32_file if m is teacher else q8_file)
                err = float(np.abs(m(x) - ref).max())
                print(f"| {name} | {size:,} | {weight_bytes(m):,} | {peak_memory(lambda: m(x)):,} | {err:.4f} "
                      f"| {validation_loss(m, val_ids, BLOCK):.4f} | {1e3 * median_time(lambda: m(x)):.1f} ms |")

    if "qat" in a.only:
        b = a.bits
        ptq = validation_loss(quantize_dynamic(teacher, bits=b), val_ids, BLOCK)
        float_ft = GPT(V, BLOCK, **TEACHER, generator=Generator(0))
        load_checkpoint(ckpt, float_ft)
        ft_val = train(float_ft, train_ids, val_ids, a.qat_steps, 3e-4, seed=7)
        ft_ptq = validation_loss(quantize_dynamic(float_ft, bits=b), val_ids, BLOCK)
        qat = GPT(V, BLOCK, **TEACHER, generator=Generator(0))
        load_checkpoint(ckpt, qat)
        qat = prepare_qat(qat, inplace=True, bits=b)
        qat_fq = train(qat, train_ids, val_ids, a.qat_steps, 3e-4, seed=7)
        qat_int = validation_loss(quantize_dynamic(qat, bits=b), val_ids, BLOCK)
        print(f"{b} bits:\n| teacher float32 | {f32_val:.4f} |\n| teacher, post-training quantized | {ptq:.4f} |\n"
              f"| + {a.qat_steps} float steps: float32 | {ft_val:.4f} |\n"
              f"| + {a.qat_steps} float steps, then post-training quantized | {ft_ptq:.4f} |\n"
              f"| + {a.qat_steps} QAT steps: fake-quantized | {qat_fq:.4f} |\n"
              f"| + {a.qat_steps} QAT steps, then quantized | {qat_int:.4f} |")

    if "distill" in a.only:
        scratch = GPT(V, BLOCK, **STUDENT, generator=Generator(3))
        print(f"student: {scratch.num_parameters():,} parameters "
              f"({scratch.num_parameters() / teacher.num_parameters():.2f} of the teacher)")
        scratch_val = train(scratch, train_ids, val_ids, a.steps, 3e-3)
        student = GPT(V, BLOCK, **STUDENT, generator=Generator(3))
        box = {}

        class WithTeacher(Module):  # runs the teacher (no grad) beside the student, for the loss
            def __init__(self):
                super().__init__()
                self.student = student

            def forward(self, idx):
                with inference(teacher, teacher.wte.weight.data):
                    box["t"] = teacher(idx)
                return self.student(idx)

            def backward(self, d):
                return self.student.backward(d)

        crit = DistillationLoss(temperature=2.0, alpha=0.5, teacher_logits=lambda: box["t"])
        distilled_val = train(student, train_ids, val_ids, a.steps, 3e-3, criterion=crit, wrap=WithTeacher())
        print(f"| from scratch | {scratch_val:.4f} |\n| distilled (T=2, alpha=0.5) | {distilled_val:.4f} |")
        for name, m in (("teacher", teacher), ("student from scratch", scratch), ("distilled student", student)):
            print(f"--- {name} ---\n{sample(m.eval(), tok)}")


if __name__ == "__main__":
    main()
