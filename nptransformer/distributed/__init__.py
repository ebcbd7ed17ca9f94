"""Past one process: data, tensor and pipeline parallelism over MPI, equal to the single-process run.

- :class:`Communicator`: the collectives (a deterministic ring all-reduce,
  broadcast, all-gather, send/recv), each under a timeout.
- :class:`DataParallel`: full replicas, gradients averaged in buckets that
  overlap the backward; with :class:`ZeroRedundancyOptimizer` the
  optimizer state split across ranks (ZeRO stage 1).
- :class:`TensorParallel`: each block's heads and feed-forward columns
  split across ranks (Megatron-style), through the op pair
  ``copy_to_group`` / ``reduce_from_group``.
- :class:`PipelineParallel`: consecutive blocks on consecutive ranks,
  micro-batches in a GPipe schedule.

Each is a ``parallel=`` for :class:`~nptransformer.training.Trainer`;
``mpiexec -n N python -m nptransformer train-char --parallel data|tensor|pipeline``
runs them from the command line. docs/distributed.md has the measurements.
Needs the ``mpi`` extra (mpi4py + MPICH) for more than one process.
"""

from .comm import Communicator, CommTimeout, DEFAULT_TIMEOUT
from .data_parallel import DataParallel
from .launch import MODES, abort_on_error, parallelize
from .pipeline import PipelineParallel
from .random import seed_default_generator, step_generator
from .ring import RingAllreduce
from .strategy import Strategy
from .tensor_parallel import TensorParallel
from .zero import ZeroRedundancyOptimizer

__all__ = ["Communicator", "CommTimeout", "DEFAULT_TIMEOUT", "DataParallel", "MODES", "PipelineParallel",
           "RingAllreduce", "Strategy", "TensorParallel", "abort_on_error", "parallelize", "seed_default_generator",
           "step_generator", "ZeroRedundancyOptimizer"]
