"""``PipelineParallel``: a GPT's blocks cut into consecutive stages, one per rank, fed micro-batches (GPipe).

Rank s holds blocks s L/S .. (s+1) L/S - 1; rank 0 also the embeddings,
the last rank the final norm and the head. A global batch is cut into M
micro-batches; the GPipe schedule runs all M forwards (each stage receives
activations (B/M, T, C) from the previous one and sends its output on),
then all M backwards in reverse order (gradients travel back). Reverse
order is what each module's stack of saved forwards pops, which is why
this schedule and not 1F1B (that one needs the oldest forward first).

While the pipeline fills and drains, stages wait: the idle ("bubble")
fraction of a step is (S-1) / (M+S-1) for S stages of equal cost;
:attr:`PipelineParallel.last_bubble` is the measured one.

The head is tied to the token embedding, which lives on rank 0: the last
rank keeps a copy, and after each backward the two add their gradients
(head part + lookup part, the single-process order), so both copies take
the same step.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .. import _checks, backend
from ..backend import dtype_name, get_array_module, to_numpy
from ..grad_mode import no_grad
from ..kernels.ops import linear_backward, linear_forward
from ..models import GPT
from ..nn.embedding import Embedding
from ..nn.module import Module, ModuleList, Parameter
from .comm import Communicator, check_divides
from .random import seed_default_generator
from ..registry import ModuleCheck, register_module_check
from .partitioned import Partitioned


class GPTStage(Module):
    """Rank ``rank``'s part of a :class:`~nptransformer.models.GPT` in a pipeline of ``size`` stages.

    forward: idx (B, T) on the first stage, else activations (B, T, C) ->
    activations (B, T, C), or logits (B, T, V) on the last stage. backward
    returns the gradient of its input (None on the first stage).
    """

    def __init__(self, gpt: Any, rank: int, size: int):
        super().__init__()
        per = gpt.n_layer // size
        self.first, self.last = rank == 0, rank == size - 1
        if self.first:
            self.wte, self.wpe, self.drop = gpt.wte, gpt.wpe, gpt.drop
        self.blocks = ModuleList(list(gpt.blocks)[rank * per:(rank + 1) * per])
        self.tied = gpt.tie_weights and size > 1
        if self.last:
            self.ln_f = gpt.ln_f
            if self.tied:
                # the embedding lives on rank 0: a copy of its own (an Embedding, so weight decay treats it as
                # the original), kept equal by adding the two gradients after each backward
                self.wte = Embedding(gpt.vocab_size, gpt.d_model, dtype=dtype_name(gpt.wte.weight.dtype))
                self.wte.weight = Parameter(gpt.wte.weight.data.copy())
            elif not gpt.tie_weights:
                self.lm_head = gpt.lm_head

    @property
    def head(self) -> Parameter:
        """The output projection's weight (V, C): the (copy of the) token embedding when tied."""
        return self.lm_head.weight if getattr(self, "lm_head", None) is not None else self.wte.weight

    def forward(self, x: Any) -> Any:
        """idx (B, T) or (B, T, C) -> (B, T, C) or logits (B, T, V)."""
        if self.first:
            x = self.wte(x)  # (B, T) -> (B, T, C)
            if self.wpe is not None:  # learned positions; the others enter each block's attention
                x = x + self.wpe(backend.arange(x.shape[1], like=x))
            x = self.drop(x)
        for block in self.blocks:
            x = block(x, is_causal=True)
        ctx = None
        if self.last:
            x, ctx = linear_forward(self.ln_f(x), self.head.data)  # (B, T, C) @ (C, V)
        self.save_for_backward(ctx)
        return x

    def backward(self, d: Any) -> Any:
        """dL/d(output) -> dL/d(input activations), None on the first stage."""
        ctx = self.saved()
        if self.last:
            d, dhead, _ = linear_backward(d, ctx)  # forward: logits = ln_f(x) W_head^T
            self.head.accumulate(dhead)
            d = self.ln_f.backward(d)
        for block in reversed(list(self.blocks)):
            d = block.backward(d)
        if not self.first:
            return d
        d = self.drop.backward(d)
        if self.wpe is not None:
            self.wpe.backward(get_array_module(d).sum(d, axis=0))  # positions were broadcast over B
        self.wte.backward(d)
        return None


class PipelineParallel(Partitioned):
    """Pipeline parallelism of a GPT over ``comm`` with ``micro_batches`` per global batch.

    ``stage`` is this rank's :class:`GPTStage`: give it (not the GPT) to the
    optimizer and the Trainer. Raises ValueError when the world size does
    not divide ``n_layer``, or ``micro_batches`` the batch size.
    """

    mode = "pipeline"

    def __init__(self, gpt: Any, comm: Communicator | None = None, micro_batches: int = 4, seed: int = 0):
        super().__init__(comm, seed)
        check_divides("the number of layers (n_layer)", gpt.n_layer, self.comm.size)
        _checks.check_positive_int("micro_batches", micro_batches)
        if getattr(gpt, "checkpoint_activations", False):
            raise ValueError("PipelineParallel: turn checkpoint_activations off (not supported in a pipeline)")
        if getattr(gpt, "positional", "learned") == "sinusoidal":
            raise ValueError("PipelineParallel: positional='sinusoidal' is not supported; use 'learned' or a "
                             "position inside the attention ('rotary', 'alibi', 'relative')")
        for p in gpt.parameters():
            p.data = backend.asarray(self.comm.broadcast(p.data), dtype=backend.dtype_name(p.dtype))
        self.micro_batches, self.d_model, self.dtype = micro_batches, gpt.d_model, gpt.wte.weight.dtype
        self._take_skeleton(gpt)
        names = {id(p): n for n, p in gpt.named_parameters()}
        self.stage = GPTStage(gpt, self.comm.rank, self.comm.size)
        # the last stage's copy of the tied embedding stands for wte.weight (equal values, equal steps)
        self._local = {names.get(id(p), "wte.weight"): p for p in self.stage.parameters()}
        self.last_bubble = math.nan
        self._busy = 0.0

    @property
    def bubble_formula(self) -> float:
        """(S-1) / (M+S-1): the idle fraction of a GPipe step with S equal stages and M micro-batches."""
        s = self.comm.size
        return (s - 1) / (self.micro_batches + s - 1)

    def _compute(self, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        self._busy += time.perf_counter() - t0
        return out

    def _micro(self, x: Any, name: str, m: int) -> list:
        check_divides(f"the batch size of {name}", int(x.shape[0]), m, "micro_batches")
        n = x.shape[0] // m
        return [x[i * n:(i + 1) * n, ...] for i in range(m)]

    def _run_forward(self, stage: Any, criterion: Any, idx: Any, targets: Any, micro_batches: int) -> float:
        r, size = self.comm.rank, self.comm.size
        total, self._act_shapes = 0.0, []
        pairs = zip(self._micro(idx, "inputs", micro_batches), self._micro(targets, "targets", micro_batches))
        for i, (x, y) in enumerate(pairs):
            shape = (x.shape[0], x.shape[1], self.d_model)
            self._act_shapes.append(shape)
            if not stage.first:
                x = backend.asarray(self.comm.recv(shape, backend.dtype_name(self.dtype), r - 1, tag=i),
                                    dtype=backend.dtype_name(self.dtype))
            out = self._compute(stage, x)
            if stage.last:
                total += float(to_numpy(self._compute(criterion, out, y)))
            else:
                self.comm.send(out, r + 1, tag=i)
        loss = self.comm.broadcast(backend.asarray([total / micro_batches], "float64"), root=size - 1)
        return float(loss[0])

    def forward_loss(self, model: Any, criterion: Any, inputs: tuple, targets: Any, step: int) -> float:
        """All M micro-batch forwards (the GPipe fill); the mean loss, broadcast from the last stage."""
        seed_default_generator(self.seed, step, self.comm.rank)
        self._busy, self._t0 = 0.0, time.perf_counter()
        return self._run_forward(model, criterion, inputs[0], targets, self.micro_batches)

    def backward(self, model: Any, criterion: Any) -> None:
        """All M backwards in reverse order (the drain), then the tied head's gradient exchange."""
        r, M = self.comm.rank, self.micro_batches
        for i in reversed(range(M)):
            if model.last:
                d = self._compute(criterion.backward, 1.0 / M)  # the loss is the mean of M micro-batch means
            else:
                d = backend.asarray(self.comm.recv(self._act_shapes[i], backend.dtype_name(self.dtype), r + 1,
                                                   tag=1000 + i), dtype=backend.dtype_name(self.dtype))
            dx = self._compute(model.backward, d)
            if not model.first:
                self.comm.send(dx, r - 1, tag=1000 + i)
        self.last_bubble = 1.0 - self._busy / (time.perf_counter() - self._t0)
        self._sync_tied(model)

    def _sync_tied(self, model: Any) -> None:
        if not model.tied:
            return
        s = self.comm.size
        if model.first:
            own = model.wte.weight
            other = self.comm.recv(own.shape, backend.dtype_name(own.dtype), s - 1, tag=3000)
            self.comm.send(own.grad, s - 1, tag=3001)
            head = backend.asarray(other, dtype=backend.dtype_name(own.dtype))
            own.grad = head + own.grad  # single-process order: the head's part first, then the lookup's
        if model.last:
            own = model.head
            self.comm.send(own.grad, 0, tag=3000)
            lookup = backend.asarray(self.comm.recv(own.shape, backend.dtype_name(own.dtype), 0, tag=3001),
                                     dtype=backend.dtype_name(own.dtype))
            own.grad = own.grad + lookup

    def clip_grad_norm(self, model: Any, max_norm: float) -> Any:
        """||g||^2 summed over the stages (the tied head counted once, on rank 0), then every gradient scaled."""
        grads = [p for p in model.parameters() if p.grad is not None]
        sq = 0.0
        for p in grads:
            if model.tied and model.last and not model.first and p is model.head:
                continue
            sq += float(to_numpy(get_array_module(p.grad).sum(p.grad * p.grad)))
        total = math.sqrt(self.comm.allreduce_scalar(sq))
        coef = min(max_norm / (total + 1e-6), 1.0)
        for p in grads:
            p.grad *= coef
        return total

    def eval_loss(self, criterion: Any, idx: Any, targets: Any) -> float:
        """criterion(logits, targets) for one batch sent through the stages whole, under no_grad; on every rank."""
        with no_grad():
            return self._run_forward(self.stage, criterion, idx, targets, 1)

    def local_parameters(self, model: Any) -> dict[str, Any]:
        """Single-process name -> this stage's Parameter (the last stage's head copy is ``wte.weight``)."""
        return self._local

    def local_model(self, model: Any) -> Any:
        """The stage: what the optimizer and the Trainer are given."""
        return self.stage


def _check_stage(rng: Any) -> ModuleCheck:
    gpt = GPT(vocab_size=5, block_size=4, n_layer=1, n_head=2, d_model=4, dropout=0.1, dtype="float64")
    return ModuleCheck(GPTStage(gpt, 0, 1), (backend.asarray(rng.integers(0, 5, size=(2, 3))),), wrt=())


register_module_check("pipeline.GPTStage", _check_stage)
