"""``Communicator``: the few collectives the parallel modes need, over MPI, deterministic, with a timeout.

Every collective here is built from point-to-point messages whose order is
fixed by the ranks alone, so a sum over ranks is added in the same order on
every run and every rank ends with the very same bits (MPI's own reductions
promise neither). Every wait polls with a deadline: a rank that died or
stopped answering turns into a :class:`CommTimeout` naming the peer and the
operation, and :meth:`Communicator.abort` then takes the whole job down,
instead of the others hanging forever.

``Communicator.world()`` without an MPI world (a plain ``python`` run, or
mpi4py not installed) is a group of one, :meth:`Communicator.single`: every
collective is the identity, so the same code runs single-process. MPI comes from the ``mpi`` extra
(``pip install 'nptransformer[mpi]'``: mpi4py and MPICH).

>>> import numpy as np
>>> comm = Communicator.single()
>>> comm.rank, comm.size, comm.allreduce(np.ones(2)).tolist()
(0, 1, [1.0, 1.0])
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from .. import _checks
from ..backend import to_numpy

#: Seconds a rank waits for a peer before giving up (``NPTRANSFORMER_COMM_TIMEOUT`` overrides it).
DEFAULT_TIMEOUT = float(os.environ.get("NPTRANSFORMER_COMM_TIMEOUT", "120"))
ABORT_GRACE_SECONDS = 0.5  # time the launcher gets to forward the abort message before MPI_Abort


class CommTimeout(RuntimeError):
    """A peer did not answer within the communicator's timeout (it died, hung, or took another path)."""


def import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError naming the extra that installs it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("the parallel modes need mpi4py and an MPI library: "
                          "pip install 'nptransformer[mpi]' (mpi4py + mpich)") from e
    return MPI


class Communicator:
    """A group of processes: ``rank`` in ``range(size)``, deterministic collectives, byte counts.

    ``comm``: an ``mpi4py.MPI.Comm`` (default ``MPI.COMM_WORLD``), or use
    :meth:`single` for a group of one. ``timeout``: seconds any wait may
    take (default :data:`DEFAULT_TIMEOUT`). ``bytes_sent`` counts the
    payload bytes this rank has sent (what docs/distributed.md tabulates).
    """

    def __init__(self, comm: Any = None, timeout: float | None = None):
        if comm is None:
            comm = import_mpi().COMM_WORLD
        self._comm = comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm is not False else (0, 1)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.bytes_sent = 0

    @classmethod
    def single(cls) -> "Communicator":
        """A group of one process: every collective is the identity, no MPI needed."""
        return cls(comm=False)

    @classmethod
    def world(cls, timeout: float | None = None) -> "Communicator":
        """``MPI.COMM_WORLD`` when mpi4py is installed and this process was started by an MPI launcher
        with more than one rank, else :meth:`single`."""
        try:
            MPI = import_mpi()
        except ImportError:
            return cls.single()
        return cls(MPI.COMM_WORLD, timeout) if MPI.COMM_WORLD.Get_size() > 1 else cls.single()

    # -- point to point ----------------------------------------------------------
    def isend(self, array: np.ndarray, dest: int, tag: int = 0) -> Any:
        """Start sending a contiguous host array to ``dest``; returns the request."""
        array = np.ascontiguousarray(array)
        self.bytes_sent += array.nbytes
        return self._comm.Isend(array, dest=dest, tag=tag)

    def irecv(self, out: np.ndarray, source: int, tag: int = 0) -> Any:
        """Start receiving into the contiguous host array ``out``; returns the request."""
        return self._comm.Irecv(out, source=source, tag=tag)

    def wait(self, requests: list, what: str, peer: int) -> None:
        """Wait for ``requests`` to complete, or raise :class:`CommTimeout` after ``timeout`` seconds."""
        deadline, spins = time.monotonic() + self.timeout, 0
        while not self.test(requests):
            spins += 1
            if spins > 200:
                # Sleeping lets the peers run: ranks often outnumber the cores.
                time.sleep(0.0002)
                if time.monotonic() > deadline:
                    raise CommTimeout(f"rank {self.rank}: no answer from rank {peer} during {what} within "
                                      f"{self.timeout:g} s (it died or hung); set NPTRANSFORMER_COMM_TIMEOUT "
                                      "to wait longer")

    def test(self, requests: list) -> bool:
        """True when every request has completed (it also lets MPI make progress on them)."""
        return bool(import_mpi().Request.Testall(requests)) if requests else True

    def send(self, array: Any, dest: int, tag: int = 0) -> None:
        """Send ``array`` (any backend; copied to the host) to rank ``dest`` and wait until it left."""
        self.wait([self.isend(to_numpy(array), dest, tag)], "send", dest)

    def recv(self, shape: tuple, dtype: Any, source: int, tag: int = 0) -> np.ndarray:
        """Receive a host array of ``shape`` and ``dtype`` from rank ``source``."""
        out = np.empty(shape, dtype=dtype)
        self.wait([self.irecv(out, source, tag)], "recv", source)
        return out

    # -- collectives ----------------------------------------------------------------
    def allreduce(self, x: Any) -> Any:
        """The sum over ranks of ``x`` (same shape and dtype on every rank), bit-identical on all ranks.

        A ring all-reduce (:mod:`.ring`): each rank sends 2 (N-1)/N of the
        array's bytes. Returns a new array on x's backend.
        """
        if self.size == 1:
            return x
        from .ring import RingAllreduce  # the ring needs the communicator: imported where used

        return RingAllreduce(self, x).wait()

    def broadcast(self, x: Any, root: int = 0) -> np.ndarray:
        """Rank ``root``'s host array on every rank (a chain root -> root+1 -> ..., so each rank sends once)."""
        host = np.ascontiguousarray(to_numpy(x))
        if self.size == 1:
            return host
        pos = (self.rank - root) % self.size
        if pos:
            host = self.recv(host.shape, host.dtype, (self.rank - 1) % self.size, tag=7)
        if pos < self.size - 1:
            self.send(host, (self.rank + 1) % self.size, tag=7)
        return host

    def allreduce_scalar(self, value: float) -> float:
        """The sum over ranks of one float, added in rank order."""
        return float(self.allgather(np.asarray([value], np.float64)).sum()) if self.size > 1 else float(value)

    def allgather(self, x: Any) -> np.ndarray:
        """(size, *x.shape): every rank's ``x`` stacked in rank order, on every rank (a ring)."""
        host = np.ascontiguousarray(to_numpy(x))
        out = np.empty((self.size,) + host.shape, host.dtype)
        out[self.rank] = host
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        for step in range(self.size - 1):
            send_i, recv_i = (self.rank - step) % self.size, (self.rank - step - 1) % self.size
            buf = np.empty_like(host)
            reqs = [self.irecv(buf, left, tag=9), self.isend(out[send_i], right, tag=9)]
            self.wait(reqs, "allgather", left)
            out[recv_i] = buf
        return out

    def allgather_json(self, obj: Any) -> list:
        """Every rank's JSON-able ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
        lengths = self.allgather(np.asarray([data.size], np.int64))[:, 0]
        padded = np.zeros(int(lengths.max()), np.uint8)
        padded[:data.size] = data
        rows = self.allgather(padded)
        return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]

    def barrier(self) -> None:
        """Return once every rank has called it (an all-gather of one byte, under the timeout)."""
        if self.size > 1:
            self.allgather(np.zeros(1, np.uint8))

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` on stderr and end every rank of the job (MPI_Abort)."""
        print(f"[rank {self.rank}/{self.size}] {message}", file=sys.stderr, flush=True)
        if self.size > 1:
            # The launcher forwards each rank's output asynchronously and MPI_Abort kills its
            # forwarders at once: without a pause the message is sometimes lost (seen with MPICH).
            time.sleep(ABORT_GRACE_SECONDS)
            self._comm.Abort(code)
        raise SystemExit(code)


def check_divides(what: str, count: int, size: int, option: str = "world size") -> None:
    """ValueError unless the ``size`` ranks can split ``count`` ``what`` evenly."""
    _checks.check_positive_int(what, count)
    if count % size:
        raise ValueError(f"{option} {size} must divide {what} ({count}): each rank takes an equal share; "
                         f"use a world size among {[n for n in range(1, count + 1) if count % n == 0]}")
