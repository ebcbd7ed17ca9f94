"""``Optimizer``: parameter groups, per-parameter state, checkpoints.

An optimizer owns ``param_groups``, a list of dicts shaped like PyTorch's:
``{"params": [Parameter, ...], "lr": ..., <other hyperparameters>}``. Each
group may override any default given to the constructor, so one optimizer can
decay the weight matrices and leave biases alone::

    AdamW([{"params": decay, "weight_decay": 0.1},
           {"params": no_decay, "weight_decay": 0.0}], lr=3e-4)

``state`` maps each Parameter to a dict of arrays (moments, momentum buffers)
and integer step counts. Subclasses implement ``_update(p, group, state)``,
the rule for one parameter; this class does the bookkeeping around it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable

from .. import backend
from .._checks import FLOAT_DTYPES, check_probability
from ..backend import dtype_name
from ..kernels.parameter_slabs import for_each_parameter
from ..nn.module import Module, Parameter


def check_real(name: str, value: Any, *, low: float, inclusive: bool, finite: bool = True) -> None:
    """Raise unless ``value`` is a real number above ``low`` (or equal to it, when ``inclusive``).

    ``finite``: infinity is refused too (an infinite learning rate sends every weight to -inf).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    above = value >= low if inclusive else value > low
    if not above or math.isnan(value):
        raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value!r}")
    if finite and math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    check_real(name, value, low=0.0, inclusive=False)


def check_nonnegative(name: str, value: Any) -> None:
    check_real(name, value, low=0.0, inclusive=True)


def check_betas(name: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        check_real(f"{name}[{i}]", beta, low=0.0, inclusive=True)
        check_probability(f"{name}[{i}]", beta)


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def grads_are_finite(params: Iterable[Parameter]) -> bool:
    """True when no gradient of ``params`` holds NaN or inf (parameters without a gradient count as finite).

    One device-to-host read for all of them together.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    xp = backend.get_array_module(*grads)
    flags = xp.stack([xp.all(xp.isfinite(g)) for g in grads])
    return bool(backend.to_numpy(xp.all(flags)))


def _param_list(params: Any, name: str) -> list[Parameter]:
    if isinstance(params, Parameter):
        return [params]
    if isinstance(params, (dict, str)) or not isinstance(params, Iterable):
        raise TypeError(f"{name} must be an iterable of Parameters, got {type(params).__name__}")
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, Parameter):
            raise TypeError(f"{name}[{i}] must be a Parameter, got {type(p).__name__}")
    if not out:
        raise ValueError(f"{name} is empty: the optimizer needs at least one Parameter")
    return out


class Optimizer:
    """Base class of optimizers (mirrors ``torch.optim.Optimizer``).

    ``params``: an iterable of :class:`~nptransformer.nn.Parameter`, or of
    dicts ``{"params": [...], <hyperparameter>: value}`` (parameter groups).
    ``defaults``: every hyperparameter's default value; a group's keys must
    be among them. Subclasses list a checker for each hyperparameter in
    ``_checks`` and implement ``_update``.

    Raises ValueError for an empty parameter list, a Parameter given twice
    (also across groups) or a bad hyperparameter, TypeError for an entry that
    is not a Parameter.
    """

    _checks: dict[str, Callable[[str, Any], None]] = {}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self._check_hyperparameters(defaults, "")
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        if isinstance(params, Parameter):
            raise TypeError(
                "params must be an iterable of Parameters or of group dicts, got one Parameter; wrap it in a list"
            )
        if isinstance(params, (dict, str)) or not isinstance(params, Iterable):
            raise TypeError(f"params must be an iterable of Parameters or of group dicts, got {type(params).__name__}")
        entries = list(params)
        if entries and all(isinstance(e, dict) for e in entries):
            groups = entries
        else:
            groups = [{"params": _param_list(entries, "params")}]
        for group in groups:
            self.add_param_group(group)

    # -- groups ---------------------------------------------------------------
    def _check_hyperparameters(self, values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            if key not in self._checks:
                raise ValueError(
                    f"{prefix}{key} is not a hyperparameter of {type(self).__name__}; known: {sorted(self._checks)}"
                )
            self._checks[key](prefix + key, value)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        """Checks that involve several hyperparameters of one group (overridden by subclasses)."""

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Append a group ``{"params": [...], <hyperparameter>: value}``; missing keys take the defaults."""
        where = f"param_groups[{len(self.param_groups)}]"
        if not isinstance(group, dict):
            raise TypeError(f"{where} must be a dict with a 'params' key, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{where} has no 'params' key (got keys {sorted(group)})")
        params = _param_list(group["params"], f"{where}['params']")
        overrides = {k: v for k, v in group.items() if k != "params"}
        self._check_hyperparameters(overrides, f"{where}.")
        merged = {**self.defaults, **overrides, "params": params}
        self._check_group(merged, where)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(f"{where}['params'][{i}] ({p!r}) appears twice in the optimizer's parameters")
            seen.add(id(p))
        self.param_groups.append(merged)

    def _all_params(self) -> list[Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    # -- the update --------------------------------------------------------------
    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no _update")

    def step(self) -> None:
        """Update every parameter that has a gradient, in place (``p.data`` keeps its memory).

        Parameters whose ``grad`` is None are skipped and their state is left as is.
        A gradient holding NaN or inf raises FloatingPointError naming the
        parameter, before any parameter or state is changed: one bad
        gradient entry would otherwise turn its weight (and, through Adam's
        moments, every later step) into NaN without a word. To skip such
        steps instead, check first (``optim.grads_are_finite``), as a loss
        scaler does.
        """
        updates, where = [], []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if tuple(p.grad.shape) != p.shape or dtype_name(p.grad.dtype) != dtype_name(p.dtype):
                    raise ValueError(
                        f"param_groups[{gi}]['params'][{pi}].grad has shape {tuple(p.grad.shape)} and dtype "
                        f"{dtype_name(p.grad.dtype)}; expected the parameter's {p.shape} and {dtype_name(p.dtype)}"
                    )
                updates.append((p, group, self.state.setdefault(p, {})))
                where.append(f"param_groups[{gi}]['params'][{pi}]")
        if not grads_are_finite([p for p, _, _ in updates]):
            bad = next(w for w, (p, _, _) in zip(where, updates) if not grads_are_finite([p]))
            raise FloatingPointError(f"{type(self).__name__}.step: {bad}.grad holds NaN or inf; no parameter "
                                     "was updated")
        # Parameters update independently: with set_num_threads(n) each thread takes a run of them.
        for_each_parameter(lambda u: self._update(*u), updates, [p.data for p, _, _ in updates])

    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to None (the next backward starts a fresh sum)."""
        for p in self._all_params():
            p.grad = None

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer as plain data, in PyTorch's layout.

        ``{"state": {i: {"step": int, name: array, ...}}, "param_groups": [{..., "params": [i, ...]}]}``
        where ``i`` numbers the parameters across groups in order. Arrays are
        copies (later steps do not change a saved state dict).
        """
        index = {id(p): i for i, p in enumerate(self._all_params())}
        state = {}
        for p, s in sorted(self.state.items(), key=lambda item: index[id(item[0])]):
            state[index[id(p)]] = {
                k: backend.get_array_module(v).astype(v, v.dtype, copy=True) if not isinstance(v, int) else v
                for k, v in s.items()
            }
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict`.

        The optimizer must have been built over the same parameters in the
        same groups. State arrays (of any backend) are copied and cast to each
        parameter's backend and dtype; integer entries become step counts.
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(groups)} parameter groups, the optimizer has {len(self.param_groups)}"
            )
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(
                    f"state_dict param_groups[{i}] has {len(saved['params'])} parameters, "
                    f"the optimizer's has {len(own['params'])}"
                )
            # Values are not re-checked: a schedule may have set lr to 0 (the end of a cosine).
            if set(saved) != set(own):
                raise ValueError(
                    f"state_dict param_groups[{i}] has keys {sorted(saved)}, "
                    f"{type(self).__name__} expects {sorted(own)}"
                )
        params = self._all_params()
        state: dict[Parameter, dict[str, Any]] = {}
        for i, saved in state_dict["state"].items():
            p = params[int(i)]
            state[p] = {k: _state_value(v, p, f"state_dict state[{i}][{k!r}]") for k, v in saved.items()}
        for saved, own in zip(groups, self.param_groups):
            own.update({k: v for k, v in saved.items() if k != "params"})
        self.state = state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, g in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} parameters, {hyper}")
        return "\n".join(lines) + "\n)"


def _state_value(value: Any, p: Parameter, name: str) -> Any:
    host = backend.to_numpy(value) if not isinstance(value, int) else value
    if getattr(host, "dtype", None) is None or host.dtype.name not in FLOAT_DTYPES:
        return int(host)  # a step count
    if tuple(host.shape) != p.shape:
        raise ValueError(f"{name} has shape {tuple(host.shape)}, the parameter has {p.shape}")
    with backend.use(backend.backend_of(p.data)):
        return backend.asarray(host.copy(), dtype=dtype_name(p.dtype))


def param_groups_for_weight_decay(model: Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s parameters into a decayed and a non-decayed group.

    Rule: a parameter is decayed when it has 2 or more dimensions (weight
    matrices of Linear layers, attention projections) and no module holding
    it has a type name containing "Embedding". Biases and norm gains (1-D)
    and embedding tables are not decayed, following GPT-2/BERT practice.
    A weight tied to an embedding (a GPT head) counts as an embedding.
    Embedding tables must therefore live in an ``Embedding``-named module to
    be exempt; a bare 2-D Parameter is decayed.

    Returns ``[{"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0}]``, leaving out an empty group,
    ready for ``AdamW(groups, lr=...)``.
    """
    check_nonnegative("weight_decay", weight_decay)
    if not isinstance(model, Module):
        raise TypeError(f"model must be a Module, got {type(model).__name__}")
    in_embedding = {
        id(p)
        for m in model.modules()
        if "Embedding" in type(m).__name__
        for p in m.parameters()
    }
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if len(p.shape) >= 2 and id(p) not in in_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
