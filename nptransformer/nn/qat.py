"""Quantization-aware training: ``FakeQuantLinear`` and ``prepare_qat(model)``.

A ``FakeQuantLinear`` computes in float what :class:`~nptransformer.nn.QuantizedLinear`
will compute in int8: the weight fake-quantized per output channel and the
input per token, both symmetric with range max|.| (the same scales as
``quantize_dynamic``), then the float linear. The backward is the linear's,
with the straight-through estimator of ``fake_quantize`` (docs/ops/fake_quantize.md)
on the weight and input gradients. After fine-tuning, ``quantize_dynamic``
turns each FakeQuantLinear into the INT8 layer it simulated.
"""

from __future__ import annotations

import math

from typing import Any

from ..backend import get_array_module
from ..kernels import ops
from ..registry import ModuleCheck, register_module_check
from .linear import Linear
from .module import Module
from .quantized import qmax_for_bits, replace_linears


def _max_abs_scale(a: Any, axis: int, qmax: int) -> Any:
    """max |a| / qmax along ``axis`` (kept), 1 where that is 0: the symmetric grid's step.

    Rounded up by one unit in the last place where max |a| / step would come out above qmax: the
    largest entry is then inside the clip range, as in exact arithmetic, and keeps its gradient.
    """
    xp = get_array_module(a)
    amax = xp.max(xp.abs(a), axis=axis, keepdims=True)
    step = xp.where(amax > 0, amax / qmax, xp.ones_like(amax))
    return xp.where(amax / step > qmax, xp.nextafter(step, xp.full_like(step, math.inf)), step)


class FakeQuantLinear(Linear):
    """A :class:`Linear` whose forward sees int8-rounded weights and inputs. Shapes: as Linear's.

    ``rounding=False`` keeps only the clipping (the straight-through
    surrogate the gradient check differentiates). ``bits``: the grid, as
    :class:`~nptransformer.nn.QuantizedLinear`'s. Build with :meth:`from_linear`
    (shares the Linear's Parameters) or as a Linear.
    """

    rounding, bits = True, 8

    @classmethod
    def from_linear(cls, linear: Linear, rounding: bool = True, bits: int = 8) -> "FakeQuantLinear":
        """A FakeQuantLinear holding ``linear``'s own Parameters (training it trains them)."""
        out = cls.__new__(cls)
        Module.__init__(out)
        out.in_features, out.out_features = linear.in_features, linear.out_features
        out.weight, out.bias = linear.weight, linear.bias
        out.rounding, out.bits = rounding, bits
        qmax_for_bits(bits)
        return out

    def forward(self, x: Any, activation: str | None = None) -> Any:
        w, q = self.weight.data, qmax_for_bits(self.bits)
        wq, wctx = ops.fake_quantize_forward(w, _max_abs_scale(w, 1, q), -q, q, rounding=self.rounding)  # per channel
        xq, xctx = ops.fake_quantize_forward(x, _max_abs_scale(x, -1, q), -q, q, rounding=self.rounding)  # per token
        bias = self.bias.data if self.bias is not None else None
        if activation is None:
            y, ctx = ops.linear_forward(xq, wq, bias)
        else:
            y, ctx = ops.linear_activation_forward(xq, wq, bias, activation=activation)
        self.save_for_backward((ctx, wctx, xctx))
        return y

    def backward(self, dy: Any) -> Any:
        """The linear's backward, then straight through each fake-quantize (dW and dx)."""
        ctx, wctx, xctx = self.saved(dy)
        dxq, dwq, dbias = ops.linear_backward(dy, ctx)
        self.weight.accumulate(ops.fake_quantize_backward(dwq, wctx))  # forward: wq = fq(W)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return ops.fake_quantize_backward(dxq, xctx)  # forward: xq = fq(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rounding={self.rounding}, bits={self.bits}"


def prepare_qat(model: Module, inplace: bool = False, bits: int = 8) -> Module:
    """``model`` with every :class:`Linear` replaced by a :class:`FakeQuantLinear` on the same Parameters.

    A copy unless ``inplace``. Train it as usual; then ``quantize_dynamic`` it
    with the same ``bits``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a Module, got {type(model).__name__}")
    qmax_for_bits(bits)
    return replace_linears(model, inplace, lambda lin: FakeQuantLinear.from_linear(lin, bits=bits),
                           keep=(FakeQuantLinear,))


def _check(rng: Any) -> ModuleCheck:
    layer = FakeQuantLinear.from_linear(Linear(4, 3, dtype="float64"), rounding=False)
    return ModuleCheck(layer, (rng.normal(size=(2, 3, 4)),), {"activation": "gelu"})


register_module_check("FakeQuantLinear", _check)
