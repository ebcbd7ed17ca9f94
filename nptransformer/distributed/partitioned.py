"""``Partitioned``: checkpoints of a model whose ranks each hold a part (tensor and pipeline parallelism).

A checkpoint is always the single-process one (:mod:`nptransformer.io`),
so any world size, 1 included, resumes it. Saving: rank 0 assembles the
full model and optimizer state, parameter by parameter under the
single-process names: a slice (tensor parallelism) is gathered from every
rank, a parameter held by one rank (a pipeline stage) is sent to rank 0,
and rank 0 writes the file atomically. Loading: every rank reads the file
into a full model and keeps its part.

The full model is a copy of a *skeleton* taken before the model was split:
the same modules with zero-stride placeholder arrays, so keeping it costs
no memory.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from .. import backend
from ..backend import dtype_name, to_numpy
from ..io import load_checkpoint, save_checkpoint
from .strategy import Strategy
from .tp_layers import gather_shard, slice_array


class Partitioned(Strategy):
    """A :class:`Strategy` whose ranks hold parts of the model (subclasses: tensor, pipeline)."""

    def _take_skeleton(self, model: Any) -> None:
        """Remember the unsplit model's structure (call before splitting it)."""
        memo = {id(p.data): np.broadcast_to(np.zeros((), dtype_name(p.dtype)), p.shape) for p in model.parameters()}
        self._skeleton = copy.deepcopy(model, memo)
        self._shapes = {n: (p.shape, dtype_name(p.dtype)) for n, p in model.named_parameters()}
        self._owners: dict[str, int] | None = None

    # -- assembling ------------------------------------------------------------------
    def _owner(self, name: str, local: dict) -> int:
        if self._owners is None:
            self._owners = {}
            for rank, names in enumerate(self.comm.allgather_json(sorted(local))):
                for n in names:
                    self._owners.setdefault(n, rank)
        return self._owners[name]

    def _collect(self, name: str, local: dict, array: Any) -> np.ndarray | None:
        """The full host array of ``name`` (or of its optimizer state ``array``) on rank 0, None elsewhere."""
        spec = self.shard_spec(name)
        if spec is not None:
            return gather_shard(self.comm, array, *spec)
        owner = self._owner(name, local)
        if owner == 0:
            return to_numpy(array) if self.is_main else None
        if self.comm.rank == owner:
            self.comm.send(array, 0, tag=5)
        elif self.is_main:
            shape, dtype = self._shapes[name]
            return self.comm.recv(shape, dtype, owner, tag=5)
        return None

    def _place(self, name: str, full: Any) -> Any:
        spec = self.shard_spec(name)
        host = to_numpy(full)
        part = host if spec is None else slice_array(host, *spec, self.comm.rank, self.comm.size)
        return backend.asarray(np.array(part, copy=True), dtype=dtype_name(host.dtype))

    def full_model(self, model: Any) -> Any:
        """The single-process model with this step's weights, on rank 0 (None elsewhere); every rank calls it."""
        local = self.local_parameters(model)
        full = copy.deepcopy(self._skeleton) if self.is_main else None
        targets = dict(full.named_parameters()) if full is not None else {}
        for name in self._shapes:
            array = self._collect(name, local, local[name].data if name in local else None)
            if full is not None:
                targets[name].data = backend.asarray(array, dtype=self._shapes[name][1])
        return full

    def _optimizer_layout(self, model: Any, optimizer: Any) -> tuple[list, dict]:
        """The ranks' parameter groups merged: [(hyperparameters, names)], and name -> {state key: its int
        value, or None for an array}. Every rank calls it (one all-gather)."""
        local = self.local_parameters(model)
        names = {id(p): n for n, p in local.items()}
        mine = [[{k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"] if id(p) in names]]
                for g in optimizer.param_groups]
        state = {names[id(p)]: {k: (v if isinstance(v, int) else None) for k, v in s.items()}
                 for p, s in optimizer.state.items() if id(p) in names}
        groups: dict[str, set] = {}
        keys: dict[str, dict] = {}
        for rank_groups, rank_state in self.comm.allgather_json([mine, state]):
            for hyper, group_names in rank_groups:
                groups.setdefault(json.dumps(hyper, sort_keys=True), set()).update(group_names)
            for n, k in rank_state.items():
                keys.setdefault(n, k)
        return [(json.loads(h), names_) for h, names_ in groups.items()], keys

    def _full_optimizer(self, optimizer: Any, layout: list, full: Any) -> Any:
        params = dict(full.named_parameters())
        groups = []
        for hyper, names in layout:
            hyper = {k: tuple(v) if isinstance(optimizer.defaults.get(k), tuple) else v for k, v in hyper.items()}
            members = [params[n] for n in self._shapes if n in names]
            if members:
                groups.append({**hyper, "params": members})
        return type(optimizer)(groups, **optimizer.defaults)

    def save_checkpoint(self, path: str, model: Any, optimizer: Any, **kwargs: Any) -> None:
        """Rank 0 assembles the single-process model and optimizer and writes them, atomically."""
        full = self.full_model(model)
        full_opt = None
        if optimizer is not None:
            layout, keys = self._optimizer_layout(model, optimizer)
            full_opt = self._full_optimizer(optimizer, layout, full) if self.is_main else None
            local = self.local_parameters(model)
            params = dict(full.named_parameters()) if self.is_main else {}
            for name in (n for n in self._shapes if n in keys):
                own = optimizer.state.get(local[name]) if name in local else None
                entry = {}
                for key, value in keys[name].items():
                    if value is not None:  # an int: a step count, the same on every rank
                        entry[key] = value
                        continue
                    array = self._collect(name, local, None if own is None else own[key])
                    entry[key] = None if array is None else backend.asarray(array)
                if self.is_main:
                    full_opt.state[params[name]] = entry
        if self.is_main:
            save_checkpoint(path, full, full_opt, **kwargs)
        self.comm.barrier()

    def load_checkpoint(self, path: str, model: Any, optimizer: Any, schedule: Any, generator: Any) -> dict:
        """Every rank reads the single-process checkpoint into a full model, then keeps its part."""
        full = copy.deepcopy(self._skeleton)
        full_opt = None if optimizer is None else self._full_optimizer(optimizer, self._optimizer_layout(
            model, optimizer)[0], full)
        state = load_checkpoint(path, full, full_opt, schedule, generator)
        params = dict(full.named_parameters())
        for name, p in self.local_parameters(model).items():
            p.data = self._place(name, params[name].data)
            if full_opt is not None and params[name] in full_opt.state:
                optimizer.state[p] = {k: v if isinstance(v, int) else self._place(name, v)
                                      for k, v in full_opt.state[params[name]].items()}
        return state
