"""Choosing a parallel mode by name, and stopping every rank when one fails.

>>> from nptransformer import GPT
>>> from nptransformer.distributed import Communicator
>>> model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
>>> parallelize("tensor", model, Communicator.single()).mode
'tensor'
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .comm import Communicator
from .data_parallel import DataParallel
from .pipeline import PipelineParallel
from .strategy import Strategy
from .tensor_parallel import TensorParallel

MODES = ("data", "tensor", "pipeline")


def parallelize(mode: str, model: Any, comm: Communicator | None = None, *, micro_batches: int = 4,
                seed: int = 0) -> Strategy:
    """The :class:`Strategy` of ``mode`` ("data", "tensor" or "pipeline") for ``model`` over ``comm``
    (default: the MPI world). ``micro_batches``: the pipeline's; ``seed``: the per-rank dropout streams."""
    if mode == "data":
        return DataParallel(model, comm, seed=seed)
    if mode == "tensor":
        return TensorParallel(model, comm, seed=seed)
    if mode == "pipeline":
        return PipelineParallel(model, comm, micro_batches=micro_batches, seed=seed)
    raise ValueError(f"parallel must be one of {list(MODES)}, got {mode!r}")


@contextlib.contextmanager
def abort_on_error(comm: Communicator) -> Iterator[None]:
    """Inside the block, an exception on any rank ends every rank (MPI_Abort) with its message.

    Without it a rank that fails leaves the others waiting for its messages
    until their timeout (:data:`~.comm.DEFAULT_TIMEOUT`).
    """
    try:
        yield
    except Exception as e:
        if comm.size == 1:
            raise
        comm.abort(f"{type(e).__name__}: {e}\n(stopping all {comm.size} ranks)")
