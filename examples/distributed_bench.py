"""Measure the parallel modes: step time, bytes sent per step (counted and by formula), overlap, bubble.

Run under MPI from the repository root (the numbers of docs/distributed.md)::

    for n in 1 2 4; do OPENBLAS_NUM_THREADS=1 mpiexec -n $n python examples/distributed_bench.py; done

Every rank times the same steps of a float32 GPT; rank 0 prints one line
per mode: the median step time, the bytes all ranks together sent per step
as counted by the communicators and as the formulas of docs/distributed.md
predict, and, per mode, what data parallelism saves by overlapping its
all-reduce with the backward, or the pipeline's measured and predicted bubble.
Needs the mpi extra (pip install 'nptransformer[mpi]').
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nptransformer import GPT, backend
from nptransformer.distributed import (Communicator, DataParallel, PipelineParallel, TensorParallel,
                                       ZeroRedundancyOptimizer)
from nptransformer.nn import CrossEntropyLoss
from nptransformer.optim import AdamW


def timed_steps(comm, strategy, model, batch, steps, zero=False):
    """Median seconds per step, bytes all ranks sent per step, bubble, optimizer-state bytes (this rank, all)."""
    net = strategy.local_model(model)
    criterion = CrossEntropyLoss()
    if zero:
        optimizer = ZeroRedundancyOptimizer(net.parameters(), AdamW, comm, lr=1e-3)
    else:
        optimizer = AdamW(net.parameters(), lr=1e-3)
    times, sent, bubbles = [], [], []
    for step in range(steps + 2):  # two untimed warm-up steps
        comm.barrier()
        before, t0 = comm.bytes_sent, time.perf_counter()
        strategy.forward_loss(net, criterion, *batch, step)
        strategy.backward(net, criterion)
        strategy.clip_grad_norm(net, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        elapsed, mine = time.perf_counter() - t0, comm.bytes_sent - before
        if step >= 2:
            times.append(comm.allgather(np.asarray([elapsed])).max())  # a step ends when its slowest rank ends
            sent.append(comm.allgather(np.asarray([mine], np.int64)).sum())
            if hasattr(strategy, "last_bubble"):
                bubbles.append(comm.allgather(np.asarray([strategy.last_bubble])).mean())  # over the stages
    if zero:
        memory = optimizer.state_bytes()
    else:
        mine = sum(v.nbytes for st in optimizer.state.values() for v in st.values() if not isinstance(v, int))
        memory = (mine, int(comm.allgather(np.asarray([mine])).sum()))
    return (statistics.median(times), int(statistics.median(sent)), statistics.mean(bubbles) if bubbles else None,
            memory)


def overlap_ab(comm, model, batch, steps):
    """Data parallelism with and without overlap, alternating step by step (the machine's noise hits both)."""
    strategy = DataParallel(model, comm, bucket_bytes=256 << 10)
    optimizer, criterion = AdamW(model.parameters(), lr=1e-3), CrossEntropyLoss()
    times, exposed = {True: [], False: []}, {True: [], False: []}
    for step in range(2 * steps + 2):
        strategy.overlap = step % 2 == 0
        comm.barrier()
        t0 = time.perf_counter()
        strategy.forward_loss(model, criterion, *batch, step)
        strategy.backward(model, criterion)
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:
            times[strategy.overlap].append(comm.allgather(np.asarray([time.perf_counter() - t0])).max())
            exposed[strategy.overlap].append(comm.allgather(np.asarray([strategy.exposed_comm])).max())
    med = {k: (statistics.median(times[k]) * 1e3, statistics.median(exposed[k]) * 1e3) for k in times}
    return (f"data parallel, {steps} steps each, alternating: with overlap {med[True][0]:.0f} ms per step, "
            f"{med[True][1]:.1f} ms waiting for all-reduces after the backward; without {med[False][0]:.0f} ms, "
            f"{med[False][1]:.1f} ms waiting")


def formula_bytes(mode, n, n_params, args):
    """Bytes all N ranks send per step (float32), from docs/distributed.md's formulas."""
    s, scalar = 4, 8 * (n - 1) * n  # every all-reduce of a float64 scalar is an all-gather: (N-1) x 8 bytes per rank
    btc = args.batch_size * args.block_size * args.d_model * s
    if n == 1:
        return 0
    if mode == "data":
        return round(2 * (n - 1) * n_params * s) + scalar  # + the loss
    if mode == "tensor":
        return round(4 * args.layers * 2 * (n - 1) * btc) + scalar  # + the clipping norm
    vc = args.vocab_size * args.d_model * s
    loss = 8 * (n - 1)  # broadcast along the chain
    return 2 * (n - 1) * btc + 2 * vc + loss + scalar  # activations, their gradients, tied head, loss, norm


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=65)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    comm = Communicator.world()
    g = np.random.default_rng(0)
    shape = (args.batch_size, args.block_size)
    batch = ((backend.asarray(g.integers(0, args.vocab_size, shape)),), backend.asarray(g.integers(0, args.vocab_size,
                                                                                                   shape)))

    def fresh():
        return GPT(args.vocab_size, args.block_size, args.layers, args.heads, args.d_model,
                   generator=backend.Generator(0))

    rows = []
    for mode in ("data", "data (no overlap)", "data + ZeRO-1", "tensor", "pipeline"):
        model = fresh()
        n_params = model.num_parameters()
        if mode.startswith("data"):
            strategy = DataParallel(model, comm, overlap=mode == "data", bucket_bytes=256 << 10)
        elif mode == "tensor":
            strategy = TensorParallel(model, comm)
        else:
            strategy = PipelineParallel(model, comm, micro_batches=args.micro_batches)
        t, sent, bubble, memory = timed_steps(comm, strategy, model, batch, args.steps, zero="ZeRO" in mode)
        predicted = formula_bytes(mode.split()[0], comm.size, n_params, args)
        if "ZeRO" in mode:  # + the owners' broadcasts of the updated parameters
            predicted += (comm.size - 1) * n_params * 4
        extra = f"Adam state: {memory[0]:,} bytes on rank 0, {memory[1]:,} on all ranks together"
        if mode == "pipeline" and comm.size > 1:
            extra += f"; bubble measured {bubble:.2f}, formula (S-1)/(M+S-1) = {strategy.bubble_formula:.2f}"
        rows.append(f"| {comm.size} | {mode} | {t * 1e3:.0f} ms | {sent:,} | {predicted:,} | {extra} |")
    overlap = overlap_ab(comm, fresh(), batch, 3 * args.steps) if comm.size > 1 else ""
    if comm.rank == 0:
        print(f"GPT {n_params:,} parameters (float32), batch {shape}, {args.micro_batches} micro-batches")
        print(overlap)
        print("| ranks | mode | median step | bytes sent per step (counted) | by formula | |")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
