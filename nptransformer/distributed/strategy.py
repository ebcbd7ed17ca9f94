"""``Strategy``: what the training loop asks of a parallel mode, and what all modes share.

:class:`~nptransformer.training.Trainer` takes ``parallel=`` one of
:class:`~.DataParallel`, :class:`~.TensorParallel`, :class:`~.PipelineParallel`
and runs each step through it::

    loss = parallel.forward_loss(model, criterion, inputs, targets, step)   # the global mean loss, every rank
    parallel.backward(model, criterion)                                     # gradients final and in sync
    parallel.clip_grad_norm(model, max_norm)                                # the global norm
    optimizer.step()

``inputs`` and ``targets`` are the whole global batch on every rank (drawn
from one generator with the same seed everywhere); each mode takes its
part. Checkpoints are written by rank 0 alone, atomically, in the
single-process format, so any world size (1 included) resumes them.
"""

from __future__ import annotations

from typing import Any

from ..io import load_checkpoint, save_checkpoint
from .comm import Communicator


class Strategy:
    """Base of the parallel modes: the communicator, the seed, rank-0 checkpoints."""

    mode = ""

    def __init__(self, comm: Communicator | None, seed: int):
        if comm is not None and not isinstance(comm, Communicator):
            raise TypeError(f"comm must be a nptransformer.distributed.Communicator or None, got {type(comm).__name__}")
        self.comm = Communicator.world() if comm is None else comm
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed

    @property
    def is_main(self) -> bool:
        """True on rank 0: the rank that prints and writes checkpoints."""
        return self.comm.rank == 0

    def forward_loss(self, model: Any, criterion: Any, inputs: tuple, targets: Any, step: int) -> float:
        """Forward and loss of one global batch; returns the global mean loss (the same float on every rank)."""
        raise NotImplementedError

    def backward(self, model: Any, criterion: Any) -> None:
        """Backward of the forward_loss just run; on return every gradient is final."""
        raise NotImplementedError

    def clip_grad_norm(self, model: Any, max_norm: float) -> Any:
        """Clip by the norm of the whole model's gradient, on all ranks alike; returns that norm."""
        raise NotImplementedError

    def local_model(self, model: Any) -> Any:
        """The part of ``model`` this rank trains: give it to the optimizer and the Trainer."""
        return model

    def local_parameters(self, model: Any) -> dict[str, Any]:
        """Single-process parameter name -> this rank's Parameter (a slice of it, or the whole)."""
        return dict(model.named_parameters())

    def shard_spec(self, name: str) -> tuple[int, int] | None:
        """(axis, blocks) when every rank holds a slice of parameter ``name`` (:mod:`.tp_layers`), else None."""
        return None

    def full_model(self, model: Any) -> Any:
        """The single-process model holding this step's weights, on rank 0 (None elsewhere); every rank calls it.

        Data parallelism keeps full replicas: the model itself.
        """
        return model if self.is_main else None

    def save_checkpoint(self, path: str, model: Any, optimizer: Any, **kwargs: Any) -> None:
        """Rank 0 writes the checkpoint (atomically); every rank returns once it is on disk."""
        if self.is_main:
            save_checkpoint(path, model, optimizer, **kwargs)
        self.comm.barrier()

    def load_checkpoint(self, path: str, model: Any, optimizer: Any, schedule: Any, generator: Any) -> dict:
        """Every rank reads the single-process checkpoint; returns its step and extras."""
        return load_checkpoint(path, model, optimizer, schedule, generator)
