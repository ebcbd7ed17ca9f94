"""``LayerNorm`` and ``RMSNorm`` over the last axis, as in torch.nn."""

from __future__ import annotations

from typing import Any

from .. import backend
from ..kernels.ops import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward
from ..registry import ModuleCheck, register_module_check
from .module import Module, Parameter


def _ones(n: int, dtype: Any) -> Any:
    return backend.asarray([1.0] * n, dtype=dtype)


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis.

    Shapes: x (..., C) -> y (..., C); ``weight`` and ``bias`` (C,) when
    ``elementwise_affine`` (bias can be dropped with ``bias=False``).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype: Any = "float32"):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError(f"normalized_shape must be one axis (C,), got {tuple(normalized_shape)}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape, self.eps = int(normalized_shape), eps
        self.weight = Parameter(_ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(backend.zeros((self.normalized_shape,), dtype=dtype)) if elementwise_affine and bias else None

    def forward(self, x: Any) -> Any:
        """x (..., C) -> normalised (..., C)."""
        y, ctx = layer_norm_forward(x, _data(self.weight), _data(self.bias), eps=self.eps)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """Adds dweight, dbias; returns dx (docs/ops/normalization.md)."""
        dx, dweight, dbias = layer_norm_backward(dy, self.saved(dy))
        _accumulate(self.weight, dweight)
        _accumulate(self.bias, dbias)
        return dx

    def extra_repr(self) -> str:
        return f"({self.normalized_shape},), eps={self.eps}"


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis (eps None: the dtype's machine epsilon).

    Shapes: x (..., C) -> y (..., C); ``weight`` (C,).
    """

    def __init__(self, normalized_shape: int, eps: float | None = None, elementwise_affine: bool = True,
                 dtype: Any = "float32"):
        super().__init__()
        self.normalized_shape, self.eps = int(normalized_shape), eps
        self.weight = Parameter(_ones(self.normalized_shape, dtype)) if elementwise_affine else None

    def forward(self, x: Any) -> Any:
        """x (..., C) -> normalised (..., C)."""
        y, ctx = rms_norm_forward(x, _data(self.weight), eps=self.eps)
        self.save_for_backward(ctx)
        return y

    def backward(self, dy: Any) -> Any:
        """Adds dweight; returns dx."""
        dx, dweight = rms_norm_backward(dy, self.saved(dy))
        _accumulate(self.weight, dweight)
        return dx

    def extra_repr(self) -> str:
        return f"({self.normalized_shape},), eps={self.eps}"


def _data(p: Parameter | None) -> Any:
    return p.data if p is not None else None


def _accumulate(p: Parameter | None, g: Any) -> None:
    if p is not None:
        p.accumulate(g)


def _check_layer_norm(rng: Any) -> ModuleCheck:
    m = LayerNorm(5, dtype="float64")
    m.weight.data = backend.asarray(rng.normal(size=5))
    m.bias.data = backend.asarray(rng.normal(size=5))
    return ModuleCheck(m, (rng.normal(size=(2, 3, 5)),))


def _check_rms_norm(rng: Any) -> ModuleCheck:
    m = RMSNorm(5, dtype="float64")
    m.weight.data = backend.asarray(rng.normal(size=5))
    return ModuleCheck(m, (rng.normal(size=(2, 3, 5)),))


register_module_check("LayerNorm", _check_layer_norm)
register_module_check("RMSNorm", _check_rms_norm)
