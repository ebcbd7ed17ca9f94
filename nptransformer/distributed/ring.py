"""``RingAllreduce``: the bandwidth-optimal all-reduce, non-blocking and deterministic.

The array is cut into N chunks. In N-1 reduce-scatter steps each rank sends
one chunk to its right neighbour and adds the chunk arriving from its left
into its own copy; after them rank r holds the full sum of chunk (r+1) mod N.
In N-1 all-gather steps the finished chunks travel once more around the
ring. Each rank sends 2 (N-1) chunks, 2 (N-1)/N of the array, whatever N is:

    t = 2 (N-1)/N x bytes / bandwidth  +  2 (N-1) x latency

Chunk c is summed in the fixed order ((x_c + x_{c+1}) + x_{c+2}) + ... around the
ring and then copied, never re-added, so every rank holds the same bits and
every run adds in the same order.

Non-blocking: :meth:`RingAllreduce.progress` advances as far as the
messages that have arrived allow and returns at once, so data parallelism
can call it between layers of the backward (overlap); :meth:`wait`
finishes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import asarray, backend_of, dtype_name, to_numpy, use


class RingAllreduce:
    """Sum ``x`` over the communicator's ranks; ``wait()`` returns the sum on x's backend.

    Shapes: x (...) -> (...), the same on every rank. ``tag``: the first of
    2 (N-1) message tags; all-reduces in flight at once need disjoint tags.
    """

    def __init__(self, comm: Any, x: Any, tag: int = 100):
        self.comm, self._tag, self._backend, self._shape = comm, tag, backend_of(x), tuple(x.shape)
        self._flat = np.array(to_numpy(x), copy=True).reshape(-1)
        n = comm.size
        bounds = np.linspace(0, self._flat.size, n + 1).round().astype(int)
        self._chunks = [self._flat[bounds[i]:bounds[i + 1]] for i in range(n)]  # views into _flat
        self._step, self._requests, self._incoming = 0, [], None
        self._post()

    @property
    def done(self) -> bool:
        """True once all 2 (N-1) steps have completed."""
        return self._step == 2 * (self.comm.size - 1)

    def _indices(self) -> tuple[int, int]:
        """(chunk sent, chunk received) at the current step."""
        r, n, s = self.comm.rank, self.comm.size, self._step
        if s >= n - 1:  # all-gather: pass on the finished chunk received last
            s -= n - 1
            return (r + 1 - s) % n, (r - s) % n
        return (r - s) % n, (r - s - 1) % n

    def _post(self) -> None:
        if self.done:
            return
        send_i, recv_i = self._indices()
        left, right = (self.comm.rank - 1) % self.comm.size, (self.comm.rank + 1) % self.comm.size
        self._incoming = np.empty_like(self._chunks[recv_i])
        tag = self._tag + self._step
        self._requests = [self.comm.irecv(self._incoming, left, tag), self.comm.isend(self._chunks[send_i], right, tag)]

    def _finish_step(self) -> None:
        _, recv_i = self._indices()
        if self._step < self.comm.size - 1:
            # reduce-scatter: ours + the partial sum of the ranks before us, in ring order
            self._chunks[recv_i][...] = self._incoming + self._chunks[recv_i]
        else:
            self._chunks[recv_i][...] = self._incoming  # all-gather: a finished chunk, copied
        self._step += 1
        self._post()

    def progress(self) -> bool:
        """Complete every step whose messages have arrived, without blocking; True when done."""
        while not self.done and self.comm.test(self._requests):
            self._finish_step()
        return self.done

    def wait(self) -> Any:
        """Block (under the communicator's timeout) until done; the sum, on the input's backend."""
        while not self.done:
            self.comm.wait(self._requests, "all-reduce", (self.comm.rank - 1) % self.comm.size)
            self._finish_step()
        with use(self._backend):
            return asarray(self._flat.reshape(self._shape), dtype=dtype_name(self._flat.dtype))
