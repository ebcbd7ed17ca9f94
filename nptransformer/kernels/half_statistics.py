"""Float32 statistics for float16 inputs: softmax, the norms, the losses and attention in float32.

A float16 sum over a row saturates early (65,504 is the largest float16, and
a layer norm's mean of squares passes it once entries pass 256), and the
running sum loses the small terms long before that (11-bit significand).
Mixed-precision practice therefore computes these reductions in float32 and
rounds only the result to float16; the matrix products of the rest of the
network stay in float16. The kernels here do that for every op whose
result is a normalisation or a reduction over a row: when every
floating-point array argument is float16, they cast the arguments to
float32, run the op through the dispatch (so the float32 kernels still
apply), and cast each result and gradient back to float16 (a loss's value
stays float32, as autocast leaves it).

For float32 and float64 arguments they never apply. The reference ops run
float16 inputs in float16 throughout (``reference_only()`` shows what that
costs; docs/precision-and-compression.md measures it on the char GPT).

>>> import numpy as np
>>> from nptransformer.functional import layer_norm_forward
>>> x = np.array([[-300.0, 0.0, 300.0]], dtype=np.float16)  # 300 * 300 passes float16's 65,504
>>> with np.errstate(over="ignore"):
...     layer_norm_forward(x, None, None)[0].tolist()  # the variance overflows: every output 0
[[-0.0, 0.0, 0.0]]
>>> y, ctx = Float32Statistics("layer_norm").forward(x, None, None)
>>> y.dtype.name, y.astype(float).round(3).tolist()
('float16', [[-1.225, 0.0, 1.225]])
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import dtype_name, get_array_module
from . import dispatch
from .dispatch import Kernel, register_kernel

#: The ops whose float16 inputs get float32 statistics: every one normalises or sums over a row.
OPS_WITH_STATISTICS = ("softmax", "log_softmax", "layer_norm", "rms_norm", "batch_norm", "cross_entropy",
                       "distillation", "scaled_dot_product_attention", "sliding_window_attention")
#: Of those, the losses: their value stays float32 (rounding a scalar to float16 saves nothing).
LOSSES = ("cross_entropy", "distillation")


def _floats(values: Any) -> list[Any]:
    return [v for v in values if _checks.is_array(v) and dtype_name(v.dtype) in _checks.FLOAT_DTYPES]


def cast_floats(value: Any, target: str, source: str | None = None) -> Any:
    """``value`` with every floating-point array (also inside a tuple) cast to dtype ``target``; with
    ``source``, only the arrays of that dtype. Anything else comes back as it is."""
    if isinstance(value, tuple):
        return tuple(cast_floats(v, target, source) for v in value)
    if _checks.is_array(value) and dtype_name(value.dtype) in ((source,) if source else _checks.FLOAT_DTYPES):
        xp = get_array_module(value)
        return xp.astype(value, getattr(xp, target))
    return value


class Float32Statistics(Kernel):
    """Op ``op`` on float16 arguments, computed in float32 and rounded back (see the module docstring).

    Shapes, arguments and results: those of the reference op ``op``.
    """

    def __init__(self, op: str, **settings: Any):
        self.op, self.name = op, f"{op}.float32_statistics"
        super().__init__(**settings)

    def configured(self, **settings: Any) -> "Float32Statistics":
        return type(self)(self.op, **{**self.settings, **settings})

    def applies(self, *args: Any, **kwargs: Any) -> bool:
        first = getattr(args[0], "dtype", None) if args else None
        if first is None or dtype_name(first) != "float16":  # every op here takes its main input first
            return False
        floats = _floats((*args, *kwargs.values()))
        return all(dtype_name(v.dtype) == "float16" for v in floats)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        args = tuple(cast_floats(a, "float32", "float16") for a in args)
        kwargs = {k: cast_floats(v, "float32", "float16") for k, v in kwargs.items()}
        out, ctx = dispatch.forward(self.op, *args, **kwargs)
        return (out if self.op in LOSSES else cast_floats(out, "float16", "float32")), ctx

    def backward(self, dout: Any, ctx: Any) -> Any:
        return cast_floats(dispatch.backward(cast_floats(dout, "float32", "float16"), ctx), "float16", "float32")


for _op in OPS_WITH_STATISTICS:
    register_kernel(Float32Statistics(_op))

__all__ = ["Float32Statistics", "OPS_WITH_STATISTICS", "LOSSES", "cast_floats"]
