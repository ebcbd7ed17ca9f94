"""``ZeroRedundancyOptimizer``: data parallelism with the optimizer state split across ranks (ZeRO stage 1).

Under data parallelism every rank holds the same averaged gradients and
would take the same optimizer step, keeping N identical copies of the
optimizer state (Adam: two arrays per parameter, twice the model). Instead
each parameter gets one *owner* rank (parameters dealt out greedily by
size, so each rank owns about 1/N of the bytes); only the owner keeps its
state and updates it, then sends the new values to the other ranks:

    after the all-reduce:  every rank holds g                   (DataParallel)
    owner of p:            p <- update(p, g_p, state_p)         (the wrapped optimizer's rule, state on one rank)
    every rank:            p <- broadcast(p, root=owner of p)

Optimizer-state memory per rank drops from S to about S/N
(:meth:`ZeroRedundancyOptimizer.state_bytes`). The cost: the broadcast sends
(N-1) x P bytes in all per step on top of the all-reduce; ZeRO proper
replaces the all-reduce by a reduce-scatter (each owner needs only its own
parameters' sum) and keeps the total unchanged, which this teaching version
does not do.

Checkpoints hold the ordinary optimizer of the wrapped class (the state
gathered on rank 0), so a single process or any world size resumes them.
"""

from __future__ import annotations

from typing import Any, Iterable

from .. import backend
from ..backend import dtype_name, to_numpy
from ..optim.optimizer import Optimizer
from .comm import Communicator


class ZeroRedundancyOptimizer(Optimizer):
    """``optimizer_class`` (e.g. AdamW) over ``params``, its state split across ``comm``'s ranks.

    ``params`` and ``defaults`` as for ``optimizer_class``; ``param_groups``
    is the whole model's (schedules set their ``lr``), the state of a
    parameter lives on its owner only (``owner[i]`` for parameter i).
    Raises ValueError when there are fewer parameters than ranks.
    """

    def __init__(self, params: Iterable[Any], optimizer_class: type, comm: Communicator | None = None,
                 **defaults: Any):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"optimizer_class must be an nptransformer Optimizer class, got {optimizer_class!r}")
        self.optimizer_class, self._checks = optimizer_class, optimizer_class._checks
        self.comm = Communicator.world() if comm is None else comm
        whole = optimizer_class(params, **defaults)  # checks everything; holds no state until it steps
        super().__init__([dict(g) for g in whole.param_groups], whole.defaults)
        everything = self._all_params()
        if len(everything) < self.comm.size:
            raise ValueError(f"ZeroRedundancyOptimizer: {len(everything)} parameters cannot be shared by "
                             f"{self.comm.size} ranks (each must own at least one)")
        loads = [0] * self.comm.size
        self.owner = []
        for p in everything:  # greedy: the next parameter goes to the rank holding the fewest bytes
            r = loads.index(min(loads))
            self.owner.append(r)
            loads[r] += p.size * p.data.dtype.itemsize
        mine = {id(p) for p, r in zip(everything, self.owner) if r == self.comm.rank}
        self._groups = [(g, [p for p in g["params"] if id(p) in mine]) for g in self.param_groups]
        self._local = optimizer_class([{**_hyper(g), "params": ps} for g, ps in self._groups if ps], **defaults)
        self.state = self._local.state

    def step(self) -> None:
        """The owner updates each parameter (in place), then every rank receives its new values."""
        for group, ps in self._groups:  # a schedule changed the lr of the groups users see
            if ps:
                local = next(g for g in self._local.param_groups if g["params"][0] is ps[0])
                local.update(_hyper(group))
        self._local.step()
        for p, r in zip(self._all_params(), self.owner):
            new = self.comm.broadcast(p.data, root=r)
            if self.comm.rank != r:
                p.data[...] = backend.asarray(new, dtype=dtype_name(p.dtype))

    def _update(self, p: Any, group: dict, state: dict) -> None:
        raise NotImplementedError("ZeroRedundancyOptimizer.step delegates to its owned optimizer")

    def state_bytes(self) -> tuple[int, int]:
        """(bytes of optimizer state on this rank, bytes all ranks hold together)."""
        mine = sum(to_numpy(v).nbytes for s in self._local.state.values() for v in s.values() if not isinstance(v, int))
        return mine, int(self.comm.allgather(backend.asarray([mine], "int64")).sum())

    def consolidated(self) -> Any:
        """An ``optimizer_class`` over all parameters holding every rank's state, on rank 0 (None elsewhere).

        Every rank must call it (the state travels to rank 0).
        """
        params = self._all_params()
        keys = {}
        for rank_keys in self.comm.allgather_json({str(i): {k: (v if isinstance(v, int) else None)
                                                             for k, v in self._local.state.get(p, {}).items()}
                                                   for i, p in enumerate(params) if self.owner[i] == self.comm.rank}):
            keys.update(rank_keys)
        full = self.full_template() if self.comm.rank == 0 else None
        for i, p in enumerate(params):
            entry, r = {}, self.owner[i]
            for key, value in keys.get(str(i), {}).items():
                if value is not None:
                    entry[key] = value
                elif r == 0:
                    entry[key] = self._local.state[p][key] if self.comm.rank == 0 else None
                elif self.comm.rank == r:
                    self.comm.send(self._local.state[p][key], 0, tag=11)
                elif self.comm.rank == 0:
                    host = self.comm.recv(p.shape, dtype_name(p.dtype), r, tag=11)
                    entry[key] = backend.asarray(host, dtype=dtype_name(p.dtype))
            if full is not None and entry:
                full.state[p] = entry
        return full

    def full_template(self) -> Any:
        """An empty ``optimizer_class`` over all parameters in this optimizer's groups (to load a checkpoint into)."""
        return self.optimizer_class([{**_hyper(g), "params": g["params"]} for g in self.param_groups], **self.defaults)

    def load_full(self, full: Any) -> None:
        """Keep this rank's share of a single-process optimizer's state and the groups' hyperparameters."""
        for group, saved in zip(self.param_groups, full.param_groups):
            group.update(_hyper(saved))
        for p, r in zip(self._all_params(), self.owner):
            if r == self.comm.rank and p in full.state:
                self._local.state[p] = full.state[p]


def _hyper(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}

