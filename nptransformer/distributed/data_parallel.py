"""``DataParallel``: every rank a full replica, each on its own rows of the global batch.

One step on N ranks, for a global batch of B rows (B divisible by N):

    rank r takes rows r B/N .. (r+1) B/N - 1             # its shard
    loss_r = criterion(model(shard), targets_r)         # mean over its rows
    backward; grads g_r                                 # dloss_r / dw
    g = (g_0 + ... + g_{N-1}) / N                       # all-reduce, in buckets
    = the gradient of the mean loss over all B rows, the single-process gradient

The all-reduce is split into buckets of about ``bucket_bytes`` of
gradients, filled in backward order (output layers first). A bucket's ring
all-reduce starts as soon as the backward of every module owning one of its
parameters has finished (its stack of saved forwards is empty), and every
later module's backward pushes the rings in flight one step further; so the
messages of the last layers travel while the first layers still compute.
``overlap=False`` starts every bucket after the whole backward (to measure
what overlapping saves). The reduced gradients are identical on every rank
(the ring copies finished sums), so every replica takes the same optimizer
step, and gradient clipping on any rank sees the global norm.
"""

from __future__ import annotations

import time
from typing import Any

from .. import _checks, backend
from ..backend import get_array_module, to_numpy
from ..io import load_checkpoint
from ..optim import clip_grad_norm
from .comm import Communicator, check_divides
from .random import seed_default_generator
from .ring import RingAllreduce
from .strategy import Strategy
from .zero import ZeroRedundancyOptimizer


class DataParallel(Strategy):
    """Data parallelism for ``model`` over ``comm`` (default: the MPI world).

    At construction rank 0's parameters are broadcast to every rank.
    ``bucket_bytes``: gradient bytes per all-reduce bucket; ``overlap``:
    start buckets during the backward; ``seed``: the dropout streams
    (:mod:`.random`, one per rank and step).

    ``exposed_comm``: seconds the last backward spent, after the model's
    backward returned, waiting for all-reduces (what overlapping hides).
    """

    mode = "data"

    def __init__(self, model: Any, comm: Communicator | None = None, bucket_bytes: int = 1 << 20,
                 overlap: bool = True, seed: int = 0):
        super().__init__(comm, seed)
        _checks.check_positive_int("bucket_bytes", bucket_bytes)
        self.model, self.overlap = model, bool(overlap)
        for p in model.parameters():  # rank 0's weights everywhere, whatever each rank initialised
            p.data = backend.asarray(self.comm.broadcast(p.data), dtype=backend.dtype_name(p.dtype))
        self.buckets = _buckets(list(reversed(model.parameters())), bucket_bytes)
        self._owner = {}  # id(parameter) -> the modules holding it directly
        for m in model.modules():
            for p in m._parameters.values():
                self._owner.setdefault(id(p), []).append(m)
        self._hooked = [m for m in model.modules() if m._parameters]
        self._ready: set[int] = set()
        self._rings: list = []
        self.exposed_comm = 0.0

    # -- the step ------------------------------------------------------------------
    def forward_loss(self, model: Any, criterion: Any, inputs: tuple, targets: Any, step: int) -> float:
        """This rank's rows of ``inputs`` and ``targets`` through model and criterion -> the global mean loss."""
        seed_default_generator(self.seed, step, self.comm.rank)
        local_inputs = tuple(self.shard(x, "inputs") for x in inputs)
        loss = criterion(model(*local_inputs), self.shard(targets, "targets"))
        return self.comm.allreduce_scalar(float(to_numpy(loss))) / self.comm.size

    def shard(self, x: Any, name: str = "x") -> Any:
        """Rows rank B/N .. (rank+1) B/N - 1 of ``x`` (B, ...)."""
        check_divides(f"the batch size of {name}", int(x.shape[0]), self.comm.size)
        n = x.shape[0] // self.comm.size
        return x[self.comm.rank * n:(self.comm.rank + 1) * n, ...]

    def backward(self, model: Any, criterion: Any) -> None:
        """Backward with bucketed all-reduces overlapping it; every gradient averaged over ranks on return."""
        self._ready, self._rings = set(), []
        if self.comm.size > 1 and self.overlap:
            for m in self._hooked:
                m.backward = self._hook(m, m.backward)  # an instance attribute: shadows the class's method
        try:
            model.backward(criterion.backward())
        finally:
            for m in self._hooked:
                m.__dict__.pop("backward", None)
        t0 = time.perf_counter()
        self._ready = {id(p) for p in model.parameters()}
        self._start_ready()
        scale = 1.0 / self.comm.size
        for bucket, ring in zip(self.buckets, self._rings):
            total = ring.wait()
            offset = 0
            for p in bucket:
                g = total[offset:offset + p.size]
                offset += p.size
                xp = get_array_module(g)
                p.grad = xp.reshape(g * scale, p.shape)
        self.exposed_comm = time.perf_counter() - t0

    def clip_grad_norm(self, model: Any, max_norm: float) -> Any:
        """Every rank holds the averaged gradients: the local norm is the global norm."""
        return clip_grad_norm(model.parameters(), max_norm)

    # -- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, path: str, model: Any, optimizer: Any, **kwargs: Any) -> None:
        """Rank 0 writes model and optimizer (a sharded optimizer's state gathered first), atomically."""
        if isinstance(optimizer, ZeroRedundancyOptimizer):
            optimizer = optimizer.consolidated()
        super().save_checkpoint(path, model, optimizer, **kwargs)

    def load_checkpoint(self, path: str, model: Any, optimizer: Any, schedule: Any, generator: Any) -> dict:
        """Every rank reads the checkpoint; a sharded optimizer keeps its share of the state."""
        if not isinstance(optimizer, ZeroRedundancyOptimizer):
            return super().load_checkpoint(path, model, optimizer, schedule, generator)
        full = optimizer.full_template()
        state = load_checkpoint(path, model, full, schedule, generator)
        optimizer.load_full(full)
        return state

    # -- buckets -------------------------------------------------------------------
    def _hook(self, module: Any, backward: Any) -> Any:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            out = backward(*args, **kwargs)
            if not module._saved:  # every forward of this module is backpropagated: its grads are final
                self._ready.update(id(p) for p in module._parameters.values()
                                   if all(not o._saved for o in self._owner[id(p)]))
                self._start_ready()
            for ring in self._rings:
                ring.progress()
            return out

        return hooked

    def _start_ready(self) -> None:
        # In bucket order, so every rank starts the same rings in the same order.
        while len(self._rings) < len(self.buckets):
            bucket = self.buckets[len(self._rings)]
            if not all(id(p) in self._ready for p in bucket):
                return
            flat = [p.grad if p.grad is not None else backend.zeros(p.shape, like=p.data) for p in bucket]
            xp = get_array_module(*flat)
            joined = xp.concat([xp.reshape(g, (-1,)) for g in flat])
            self._rings.append(RingAllreduce(self.comm, joined, tag=1000 + 100 * len(self._rings)))

    def bytes_per_step(self) -> int:
        """Bytes each rank sends per step by the ring formula: 2 (N-1)/N x gradient bytes (+ the loss)."""
        n = self.comm.size
        grad_bytes = sum(p.size * p.data.dtype.itemsize for p in self.model.parameters())
        return round(2 * (n - 1) / n * grad_bytes) if n > 1 else 0


def _buckets(params: list, bucket_bytes: int) -> list[list]:
    buckets, size = [[]], 0
    for p in params:
        nbytes = p.size * p.data.dtype.itemsize
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets

