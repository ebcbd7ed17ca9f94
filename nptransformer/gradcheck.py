"""Finite-difference gradient checking for ops, layers, models and your own code.

``check_grad`` compares a hand-written backward with central differences

    dL/dx_j  ~  (L(x + eps e_j) - L(x - eps e_j)) / 2 eps,     L(x) = sum(R * f(x)),

where R is a fixed random cotangent, so the backward is checked exactly as it
is used: called with dL/df = R. Inputs with at most ``max_elementwise``
entries are perturbed entry by entry (every column of the Jacobian,
contracted with R); larger ones along ``n_directions`` random unit directions
v, comparing (L(x + eps v) - L(x - eps v)) / 2 eps with <grad, v>.

What it accepts as ``fn``:

- an op pair ``(forward, backward)``: ``forward(*inputs, **kwargs) -> (out, ctx)``,
  ``backward(dout, ctx) -> grad or tuple of grads``;
- a :class:`~nptransformer.nn.Module`, or any object with ``__call__`` and
  ``backward(dout)``; its parameters (``named_parameters()``) are checked too.

Gradients returned as a tuple line up with the inputs by position when the
tuple is as long as ``inputs``, otherwise with ``wrt``. A tuple output is
checked through its first element.

Default tolerances (pass when max|analytic - numeric| <= atol + rtol * scale,
scale = max|numeric| for entrywise rows, ||grad||_2 for directional rows):

=========  ======  ======  ======
dtype      eps     atol    rtol
=========  ======  ======  ======
float64    1e-6    1e-8    1e-6
float32    1e-3    1e-3    2e-2
float16    1e-2    5e-2    1e-1
=========  ======  ======  ======

Besides the numbers it asserts that forward and backward leave the inputs,
the parameters and the upstream gradient unmutated. A failure is retried on
inputs moved by up to 1e-2 (``kink_retries`` times): a point sitting on a kink
(relu at 0, a tie in a max) is not differentiable there, and a wrong formula
fails at the moved points too. When every try fails, the report shows the
inputs as given, with each failing row's worst entry (index, analytic value,
numeric value). Random ops are made deterministic by restoring
``backend.default_generator`` before every forward.

>>> import numpy as np
>>> from nptransformer.functional import softmax_forward, softmax_backward
>>> report = check_grad((softmax_forward, softmax_backward), [np.random.default_rng(0).normal(size=(3, 4))])
>>> report.passed
True
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import backend
from ._checks import FLOAT_DTYPES, is_array
from .grad_mode import no_grad

TOLERANCES = {
    "float64": {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6},
    "float32": {"eps": 1e-3, "atol": 1e-3, "rtol": 2e-2},
    "float16": {"eps": 1e-2, "atol": 5e-2, "rtol": 1e-1},
}


@dataclass
class GradRow:
    """One checked input or parameter."""

    name: str
    mode: str  # "entrywise" or "directional"
    max_abs: float
    max_rel: float
    passed: bool
    #: where the error is largest: an entry's index (entrywise) or ("direction", n) (directional); None
    #: when the gradient is missing or misshapen
    worst: tuple | None = None
    #: the analytic and numeric values there: dL/dx at that entry, or the directional derivative <grad, v>
    analytic: float = float("nan")
    numeric: float = float("nan")

    def describe_worst(self) -> str:
        """One line naming the worst entry and its two values, e.g. ``worst at (1, 0): analytic ... numeric ...``."""
        if self.mode == "missing":
            return f"{self.name}: the backward returned None where a gradient was expected"
        if self.worst is None:
            return f"{self.name}: the gradient has the wrong shape"
        where = f"direction {self.worst[1]}" if self.worst[:1] == ("direction",) else f"index {self.worst}"
        return f"{self.name}: worst at {where}: analytic {self.analytic:.6g}, numeric {self.numeric:.6g}"


@dataclass
class GradcheckReport:
    """Result of :func:`check_grad`: one row per input and parameter, plus mutation findings."""

    label: str
    backend: str
    dtype: str
    rows: list[GradRow] = field(default_factory=list)
    mutations: list[str] = field(default_factory=list)
    #: how many times the inputs were moved and the check rerun (0: the given inputs decided)
    retries: int = 0
    #: True when the given inputs failed and moved ones passed: the given point is probably on a kink
    passed_after_move: bool = False

    @property
    def passed(self) -> bool:
        """True when every row passed and nothing was mutated."""
        return not self.mutations and all(r.passed for r in self.rows)

    @property
    def max_abs(self) -> float:
        """Worst absolute error over all rows."""
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        """Worst relative error over all rows."""
        return max((r.max_rel for r in self.rows), default=0.0)

    def table(self) -> str:
        """A readable table of the rows."""
        lines = [f"gradcheck {self.label} [{self.backend}, {self.dtype}]",
                 f"  {'input':<34} {'mode':<12} {'max abs err':>12} {'max rel err':>12}  result"]
        for r in self.rows:
            lines.append(
                f"  {r.name:<34} {r.mode:<12} {r.max_abs:>12.3e} {r.max_rel:>12.3e}  {'ok' if r.passed else 'FAIL'}"
            )
        lines.extend(f"  MUTATED: {m}" for m in self.mutations)
        lines.extend(f"  {r.describe_worst()}" for r in self.rows if not r.passed)
        if self.passed_after_move:
            lines.append(f"  note: the given inputs failed and inputs moved by up to 1e-2 passed "
                         f"(retry {self.retries}); the given point is probably on a kink (relu at 0, a tie in a max)")
        elif self.retries and not self.passed:
            lines.append(f"  note: {self.retries} retries on inputs moved by up to 1e-2 failed too, so this is "
                         "not a kink at one point; the rows above are for the inputs as given")
        return "\n".join(lines)

    def raise_if_failed(self) -> "GradcheckReport":
        """Raise AssertionError with the table unless everything passed; returns self."""
        if not self.passed:
            raise AssertionError(self.table())
        return self


class _Target:
    """Uniform view of an op pair or a module: run forward, run backward, list parameters."""

    def __init__(self, fn: Any, kwargs: dict):
        self.kwargs = kwargs
        if isinstance(fn, tuple) and len(fn) == 2 and all(callable(f) for f in fn):
            self.forward, self.backward_fn = fn
            self.module = None
            self.label = getattr(self.forward, "__name__", "op").removesuffix("_forward")
        elif callable(fn) and hasattr(fn, "backward"):
            self.module = fn
            self.label = type(fn).__name__
        else:
            raise TypeError("fn must be a (forward, backward) pair or a callable object with a backward method")

    def params(self) -> list[tuple[str, Any]]:
        if self.module is not None and hasattr(self.module, "named_parameters"):
            return list(self.module.named_parameters())
        return []

    def run(self, args: Sequence[Any]) -> tuple[Any, Any]:
        if self.module is None:
            out, ctx = self.forward(*args, **self.kwargs)
        else:
            out, ctx = self.module(*args, **self.kwargs), None
        return (out[0] if isinstance(out, tuple) else out), ctx

    def grads(self, dout: Any, ctx: Any) -> Any:
        return self.backward_fn(dout, ctx) if self.module is None else self.module.backward(dout)


def _align(grads: Any, n_inputs: int, wrt: Sequence[int]) -> dict[int, Any]:
    if not wrt:  # only parameters are checked (token-id inputs have no gradient)
        return {}
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) == n_inputs:
        return {i: g for i, g in enumerate(grads)}
    if len(grads) == len(wrt):
        return dict(zip(wrt, grads))
    raise ValueError(
        f"backward returned {len(grads)} gradients, but there are {n_inputs} inputs and {len(wrt)} in wrt; "
        "return one per input, or one per wrt entry"
    )


def _to_backend(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return backend.asarray(a.copy())  # a copy, so a mutating op cannot hide by changing our reference too
    return a


def _host(a: Any) -> Any:
    return backend.to_numpy(a) if is_array(a) else a


@contextlib.contextmanager
def _same_randomness() -> Iterator[Callable[[], None]]:
    state = backend.default_generator.state()

    def reset() -> None:
        backend.default_generator.set_state(state)

    try:
        yield reset
    finally:
        reset()


def check_grad(
    fn: Any,
    inputs: Sequence[Any],
    kwargs: dict | None = None,
    *,
    wrt: Sequence[int] | None = None,
    eps: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    max_elementwise: int = 128,
    n_directions: int = 3,
    seed: int = 0,
    kink_retries: int = 2,
    label: str | None = None,
) -> GradcheckReport:
    """Check ``fn``'s backward against central differences; returns a :class:`GradcheckReport`.

    ``inputs``: positional arguments (NumPy arrays are moved to the current
    backend; other values pass through). ``wrt``: positions of the inputs to
    check (default: every floating-point array). Tolerances default per dtype
    (module docstring). Call ``.raise_if_failed()`` on the result in tests.
    """
    kwargs = dict(kwargs or {})
    target = _Target(fn, kwargs)
    # a NumPy float scalar (what indexing or rng.normal() gives) is checked as the 0-d array it stands for
    host_inputs = [np.asarray(a) if isinstance(a, np.floating) else _host(a) for a in inputs]
    if wrt is None:
        wrt = [i for i, a in enumerate(host_inputs) if isinstance(a, np.ndarray) and a.dtype.name in FLOAT_DTYPES]
    aligned = list(wrt)  # the backward's gradients line up with every differentiable position...
    wrt = [i for i in wrt if i < len(host_inputs) and host_inputs[i] is not None]  # ...of which these are given
    params = target.params()
    floats = [host_inputs[i] for i in wrt] + [backend.to_numpy(p.data) for _, p in params]
    dtype = floats[0].dtype.name if floats else "float64"
    tol = dict(TOLERANCES.get(dtype, TOLERANCES["float32"]))
    tol.update({k: v for k, v in (("eps", eps), ("atol", atol), ("rtol", rtol)) if v is not None})
    rng = np.random.default_rng(seed)

    first = None
    for attempt in range(kink_retries + 1):
        report = _check_once(target, host_inputs, wrt, aligned, params, dtype, tol, max_elementwise, n_directions,
                             rng)
        report.label = label or target.label
        report.retries = attempt
        report.passed_after_move = attempt > 0 and report.passed
        if report.passed or report.mutations:
            return report
        first = first or report
        # np.asarray: a 0-d input plus a scalar is a NumPy scalar, whose entries cannot be moved in place
        host_inputs = [
            np.asarray(a + rng.uniform(-1e-2, 1e-2, size=a.shape).astype(a.dtype)) if i in wrt else a
            for i, a in enumerate(host_inputs)
        ]
    first.retries = kink_retries
    return first


def _check_once(
    target: _Target,
    host_inputs: list,
    wrt: Sequence[int],
    aligned: Sequence[int],
    params: list,
    dtype: str,
    tol: dict,
    max_elementwise: int,
    n_directions: int,
    rng: np.random.Generator,
) -> GradcheckReport:
    report = GradcheckReport("", backend.get_backend(), dtype)
    saved_params = {name: (p.data, p.grad) for name, p in params}
    with _same_randomness() as reset:
        try:
            args = [_to_backend(a) for a in host_inputs]
            reset()
            out, ctx = target.run(args)
            out_host = backend.to_numpy(out)
            cot_host = rng.normal(size=out_host.shape).astype(out_host.dtype)
            cot = backend.asarray(cot_host.copy())
            for _, p in params:
                p.grad = None
            grads = _align(target.grads(cot, ctx), len(args), aligned)
            report.mutations = _mutations(args, host_inputs, cot, cot_host, params, saved_params)
            analytic = {f"input {i}": grads.get(i) for i in wrt}
            analytic.update({name: p.grad for name, p in params})

            def loss(call_args: list) -> float:
                reset()
                with no_grad():
                    y, _ = target.run(call_args)
                return float(np.sum(backend.to_numpy(y).astype(np.float64) * cot_host))

            for i in wrt:
                def set_input(value: np.ndarray, i: int = i) -> float:
                    call_args = list(args)
                    call_args[i] = backend.asarray(value)
                    return loss(call_args)

                report.rows.append(
                    _compare(f"input {i}", host_inputs[i], analytic[f"input {i}"], set_input, tol, max_elementwise, n_directions, rng)
                )
            for name, p in params:
                base = saved_params[name][0]
                host = backend.to_numpy(base)

                def set_param(value: np.ndarray, p: Any = p) -> float:
                    p.data = backend.asarray(value)
                    return loss(args)

                row = _compare(name, host, analytic[name], set_param, tol, max_elementwise, n_directions, rng)
                p.data = base
                report.rows.append(row)
        finally:
            for name, p in params:
                p.data, p.grad = saved_params[name]
            if target.module is not None and hasattr(target.module, "clear_saved"):
                target.module.clear_saved()
    return report


def _mutations(args: list, host_inputs: list, cot: Any, cot_host: np.ndarray, params: list, saved: dict) -> list[str]:
    found = []
    for i, (a, h) in enumerate(zip(args, host_inputs)):
        if is_array(a) and not np.array_equal(backend.to_numpy(a), h, equal_nan=True):
            found.append(f"input {i} was modified by forward/backward")
    if not np.array_equal(backend.to_numpy(cot), cot_host):
        found.append("the upstream gradient (dout) was modified by backward")
    for name, p in params:
        if p.data is not saved[name][0]:
            found.append(f"parameter {name} was replaced by forward/backward")
    return found


def _compare(
    name: str,
    x: np.ndarray,
    analytic: Any,
    loss_at: Callable[[np.ndarray], float],
    tol: dict,
    max_elementwise: int,
    n_directions: int,
    rng: np.random.Generator,
) -> GradRow:
    eps = tol["eps"]
    if analytic is None:
        return GradRow(name, "missing", float("inf"), float("inf"), False)
    g = backend.to_numpy(analytic).astype(np.float64)
    if g.shape != x.shape:
        return GradRow(f"{name} shape {g.shape} != {x.shape}", "shape", float("inf"), float("inf"), False)
    if x.size <= max_elementwise:
        num = np.zeros(x.shape)
        flat = num.reshape(-1)
        for j in range(x.size):
            plus, minus = np.array(x), np.array(x)  # np.array, not .copy(): keeps a 0-d input an array
            plus.reshape(-1)[j] += eps
            minus.reshape(-1)[j] -= eps
            flat[j] = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        diff = np.abs(g - num)
        j = int(np.argmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0
        err = float(np.max(diff, initial=0.0))
        scale = float(max(np.max(np.abs(num), initial=0.0), np.max(np.abs(g), initial=0.0)))
        worst = tuple(int(k) for k in np.unravel_index(j, x.shape)) if x.size else ()
        analytic_at = float(g.reshape(-1)[j]) if x.size else 0.0
        numeric_at = float(flat[j]) if x.size else 0.0
        mode = "entrywise"
    else:
        err, scale = -1.0, float(np.linalg.norm(g))
        worst, analytic_at, numeric_at = None, float("nan"), float("nan")
        for n in range(n_directions):
            v = rng.normal(size=x.shape)
            v /= np.linalg.norm(v)
            num_dd = (loss_at(x + eps * v.astype(x.dtype)) - loss_at(x - eps * v.astype(x.dtype))) / (2 * eps)
            an_dd = float(np.sum(g * v))
            e = abs(num_dd - an_dd)
            if not e <= err:  # also takes a NaN, so it is the one shown
                err, worst, analytic_at, numeric_at = e, ("direction", n), an_dd, num_dd
        err, mode = max(err, 0.0), "directional"  # max keeps a NaN (the comparison is False)
    if not np.isfinite(err):
        return GradRow(name, mode, float("inf"), float("inf"), False, worst, analytic_at, numeric_at)
    rel = err / scale if scale > 0 else err
    return GradRow(name, mode, err, rel, err <= tol["atol"] + tol["rtol"] * scale, worst, analytic_at, numeric_at)
