"""``MixedPrecision``: run a model's forward and backward in float16 or bfloat16, keep its weights in float32.

The wrapped model stays the *master*: its float32 parameters are what the
optimizer updates (so Adam's moments are float32 too) and what
``parameters()`` lists. A private working copy does the arithmetic: every
forward first casts the master weights into it, runs it on the inputs
(float arrays cast, ids left alone), and returns the output cast back to
float32, so the loss (and its softmax) is computed in float32. The
backward multiplies the incoming gradient by the loss scale of ``scaler``
before casting it down (small gradients would otherwise flush to zero),
runs the working copy's backward, and adds each working gradient, cast to
float32 and divided by the same scale, into the master parameter. A
gradient that overflowed stays inf after the division, so
``scaler.step(optimizer)`` sees it and skips the step.

``"float16"``: the working copy is float16. Its matrix products and
elementwise ops run in float16; softmax, the norms' statistics, the losses
and attention get float16 inputs and compute in float32
(:mod:`nptransformer.kernels.half_statistics`), rounding only their results.

``"bfloat16"``: NumPy has no bfloat16, so the working copy is float32 and
every op's result and gradient is rounded to bfloat16
(:mod:`nptransformer.kernels.bfloat16`): bfloat16's numbers, float32's
memory. bfloat16 has float32's exponent range, so no loss scale is needed.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from .. import _checks
from ..backend import dtype_name, get_array_module
from ..kernels.bfloat16 import emulate_bfloat16, round_results
from ..kernels.half_statistics import cast_floats
from ..registry import ModuleCheck, register_module_check
from .module import Module


#: The working precisions; float32 and float64 too, where the wrapper only scales (as its gradient check does).
PRECISIONS = ("float16", "bfloat16", "float32", "float64")


class MixedPrecision(Module):
    """Wraps ``model`` (float32 master weights) to compute in ``dtype``; see the module docstring.

    ``scaler``: a :class:`~nptransformer.optim.GradScaler` (its ``scale`` is
    read at each forward) or None for no loss scaling. Shapes: those of
    ``model``; the output has the master dtype.

    >>> import numpy as np
    >>> from nptransformer.nn import Linear
    >>> mp = MixedPrecision(Linear(4, 2))
    >>> y = mp(np.ones((3, 4), dtype=np.float32)); y.dtype.name
    'float32'
    >>> _ = mp.backward(np.ones_like(y)); mp.model.weight.grad.dtype.name
    'float32'
    """

    def __init__(self, model: Module, dtype: str = "float16", scaler: Any = None):
        super().__init__()
        if not isinstance(model, Module):
            raise TypeError(f"model must be a Module, got {type(model).__name__}")
        if dtype not in PRECISIONS:
            raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}")
        self.model, self.dtype, self.scaler = model, dtype, scaler
        working = copy.deepcopy(model).to(dtype="float32" if dtype == "bfloat16" else dtype)
        object.__setattr__(self, "_working", working)  # not a child: its parameters are not trained directly
        object.__setattr__(self, "_pairs", list(zip(model.parameters(), working.parameters())))

    @property
    def working(self) -> Module:
        """The copy in ``dtype`` that computes (refreshed from the master weights at every forward)."""
        return self._working

    def _rounding(self) -> Any:
        """The block the working copy runs in: bfloat16 rounding at every op, or nothing."""
        return emulate_bfloat16() if self.dtype == "bfloat16" else contextlib.nullcontext()

    def _narrow(self, value: Any) -> Any:
        """Float arrays (also in a tuple) cast to the working dtype, and rounded if that is bfloat16."""
        value = cast_floats(value, dtype_name(self._pairs[0][1].data.dtype))
        return round_results(value) if self.dtype == "bfloat16" else value

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        for master, work in self._pairs:
            work.data = self._narrow(master.data)
        self._working.train(self.training)
        with self._rounding():
            out = self._working(*(self._narrow(x) for x in inputs), **kwargs)
        scale = 1.0 if self.scaler is None else float(self.scaler.scale)
        self.save_for_backward(scale)
        return cast_floats(out, dtype_name(self._pairs[0][0].data.dtype))

    def backward(self, dout: Any) -> Any:
        """Scaled backward in the working precision; adds grad / scale (float32) into the master parameters;
        returns dx / scale."""
        scale = self.saved(dout)
        with self._rounding():
            dx = self._working.backward(self._narrow(dout * scale))
        for master, work in self._pairs:
            if work.grad is not None:
                xp = get_array_module(work.grad)
                master.accumulate(xp.astype(work.grad, master.data.dtype) / scale)  # forward: dout * scale
                work.grad = None
        return _unscale(dx, self._pairs[0][0].data, scale)

    def clear_saved(self) -> None:
        super().clear_saved()
        self._working.clear_saved()

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, scaler={self.scaler!r}"


def _unscale(dx: Any, ref: Any, scale: float) -> Any:
    if isinstance(dx, tuple):
        return tuple(_unscale(d, ref, scale) for d in dx)
    if hasattr(dx, "dtype") and dtype_name(dx.dtype) in _checks.FLOAT_DTYPES:
        return get_array_module(dx).astype(dx, ref.dtype) / scale
    return dx


def _check(rng: Any) -> ModuleCheck:
    # The working copy in float64 too: the check then proves the scale/unscale bookkeeping exactly.
    # Any object with a ``scale`` is a scaler here (GradScaler lives in optim, above nn).
    from types import SimpleNamespace

    from .feed_forward import FeedForward

    return ModuleCheck(MixedPrecision(FeedForward(4, 8, dtype="float64"), "float64", SimpleNamespace(scale=1024.0)),
                       (rng.normal(size=(2, 3, 4)),))


register_module_check("MixedPrecision", _check)
