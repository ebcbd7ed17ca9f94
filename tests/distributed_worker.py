"""Launched by tests/test_distributed.py under ``mpiexec -n N``: one parallel mode, a few float64 steps.

Each rank writes OUT/rank<r>.npz: the losses of every step, the gradients of
the first step and the weights after the last, under the single-process
parameter names, plus how tensor parallelism sliced each one.
Usage: python distributed_worker.py MODE OUT [--model gpt|seq2seq] [--steps K] [--checkpoint PATH [--resume]]
[--dropout P] [--fail] [--hang] [--timeout S]. MODE: data, zero (data + ZeRO stage 1), tensor, pipeline.
--fail: rank 1 raises at step 2; --hang: rank 1 stops answering at step 2; --timeout: the communicator's.
"""

import argparse
import time

import numpy as np

from nptransformer import GPT, Seq2SeqTransformer, backend
from nptransformer.distributed import (Communicator, DataParallel, PipelineParallel, TensorParallel,
                                       ZeroRedundancyOptimizer)
from nptransformer.nn import CrossEntropyLoss
from nptransformer.optim import SGD, AdamW
from nptransformer.training import Trainer

CONFIG = dict(vocab_size=11, block_size=8, n_layer=4, n_head=4, d_model=8, dtype="float64")
BATCH, STEPS = (4, 8), 3


def batch(g):
    return (backend.asarray(g.integers(0, 11, BATCH)),), backend.asarray(g.integers(0, 11, BATCH))


def seq2seq_batch(g):
    src, tgt = g.integers(1, 11, (4, 6)), g.integers(1, 11, (4, 6))
    src[0, 4:] = 0  # padding, masked in the encoder and the cross-attention
    return (backend.asarray(src), backend.asarray(tgt[:, :-1])), backend.asarray(tgt[:, 1:])


def optimizer(model_name, params, comm=None):
    # The encoder-decoder's cross-attention key bias has an exact gradient of zero (softmax ignores a shift
    # shared by all keys): what it gets is rounding noise, which Adam divides by its eps and blows up to
    # 1e-12 within a few steps in any two differently-rounded runs. SGD shows the equality without that.
    if model_name == "seq2seq":
        return SGD(params, lr=0.1, momentum=0.9)
    if comm is not None:  # ZeRO stage 1: the same AdamW, its state split across the ranks
        return ZeroRedundancyOptimizer(params, AdamW, comm, lr=1e-2)
    return AdamW(params, lr=1e-2)


def build(model_name, seed, dropout=0.0):
    """(model, batch function) of the named family, float64, initialised from ``seed``."""
    backend.manual_seed(seed)  # some layers initialise from the default generator
    if model_name == "seq2seq":
        model = Seq2SeqTransformer(11, 11, d_model=8, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                   dim_feedforward=12, dropout=0.0, pad_id=0, dtype="float64",
                                   generator=backend.Generator(seed))
        return model, seq2seq_batch
    return GPT(**CONFIG, dropout=dropout, generator=backend.Generator(seed)), batch


def main(mode, out, fail=False, steps=STEPS, checkpoint=None, resume=False, model_name="gpt", hang=False,
         timeout=20.0, dropout=0.0):
    comm = Communicator(timeout=timeout)
    model, batch = build(model_name, comm.rank, dropout)  # different weights per rank: rank 0's must win
    strategy = {"data": lambda: DataParallel(model, comm, bucket_bytes=3000),
                "zero": lambda: DataParallel(model, comm, bucket_bytes=3000),
                "tensor": lambda: TensorParallel(model, comm),
                "pipeline": lambda: PipelineParallel(model, comm, micro_batches=2)}[mode]()
    net = strategy.local_model(model)
    names = {id(p): n for n, p in strategy.local_parameters(net).items()}
    criterion = CrossEntropyLoss()
    gen = backend.Generator(1)
    inputs, targets = batch(backend.Generator(7))
    strategy.forward_loss(net, criterion, inputs, targets, 0)
    strategy.backward(net, criterion)
    arrays = {}
    for p in net.parameters():
        name = names[id(p)]
        arrays["g/" + name] = backend.to_numpy(p.grad)
        if strategy.shard_spec(name) is not None:
            arrays["spec/" + name] = np.asarray(strategy.shard_spec(name))
    net.zero_grad()

    def batches(g):
        if fail and comm.rank == 1 and trainer.step == 1:
            raise RuntimeError("rank 1 fails on purpose")
        if hang and comm.rank == 1 and trainer.step == 1:
            time.sleep(600)  # stuck without a word: the others must notice by themselves
        return batch(g)

    opt = optimizer(model_name, net.parameters(), comm if mode == "zero" else None)
    trainer = Trainer(net, opt, criterion, batches, parallel=strategy, generator=gen, max_grad_norm=0.5,
                      checkpoint=checkpoint)
    try:
        history = trainer.fit(steps, log_every=1, resume=resume)
    except Exception as e:
        comm.abort(f"{type(e).__name__}: {e}")
    for p in net.parameters():
        arrays["w/" + names[id(p)]] = backend.to_numpy(p.data)
    arrays["loss"] = np.asarray([h["loss"] for h in history])
    if isinstance(trainer.optimizer, ZeroRedundancyOptimizer):
        arrays["state_bytes"] = np.asarray(trainer.optimizer.state_bytes())
    np.savez(f"{out}/rank{comm.rank}.npz", **arrays)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("out")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--model", default="gpt", choices=["gpt", "seq2seq"])
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    args = parser.parse_args()
    main(args.mode, args.out, args.fail, args.steps, args.checkpoint, args.resume, args.model, args.hang,
         args.timeout, args.dropout)
