"""INT8 dynamic quantization: ``QuantizedLinear`` and ``quantize_dynamic(model)``.

Weights are quantized once, symmetrically per output channel::

    s_w[o] = max_i |W[o, i]| / 127          q_w = round(W / s_w)  in [-127, 127]  (int8)

activations per token (each row of x, its own scale), at run time::

    s_x[t] = max_i |x[t, i]| / 127          q_x = round(x / s_x)  (int8)

and the product accumulates in int32 before one float rescale::

    y[t, o] = (sum_i q_x[t, i] q_w[o, i]) * s_x[t] * s_w[o] + b[o]

NumPy's integer matmul does not go through BLAS, so ``path="dequantize"``
instead rebuilds a float32 weight (q_w * s_w) and uses the float GEMM: same
stored bytes, float activations. docs/precision-and-compression.md measures
both. Inference only: these layers have no backward.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import _checks
from ..backend import get_array_module
from ..kernels import ops
from .linear import Linear
from .module import Module, Parameter

QMAX = 127  # symmetric int8: -128 is never used, so q and -q are both representable


def qmax_for_bits(bits: int) -> int:
    """2^(bits-1) - 1: the largest level of a symmetric ``bits``-bit grid (127 for 8 bits, 7 for 4)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8] (levels stored in int8), got {bits!r}")
    return 2 ** (bits - 1) - 1
PATHS = ("int8", "dequantize")


def quantize_rows(w: Any, qmax: int = QMAX) -> tuple[Any, Any]:
    """Symmetric per-row int8: w (R, C) float -> (q (R, C) int8, scale (R,) float, w's dtype); w ~ q * scale[:, None].

    Levels -qmax..qmax (127: 8 bits). An all-zero row gets scale 1 (q = 0), not a division by zero.
    """
    _checks.check_float("w", w)
    _checks.check_ndim("w", w, (2,))
    xp = get_array_module(w)
    amax = xp.max(xp.abs(w), axis=1)
    scale = xp.where(amax > 0, amax / qmax, xp.ones_like(amax))
    q = xp.clip(xp.round(w / scale[:, None]), -qmax, qmax)
    return xp.astype(q, xp.int8), scale


def dequantize_rows(q: Any, scale: Any) -> Any:
    """q (R, C) int8, scale (R,) -> q * scale[:, None] in scale's dtype."""
    xp = get_array_module(q, scale)
    return xp.astype(q, scale.dtype) * scale[:, None]


class QuantizedLinear(Module):
    """An INT8 ``Linear`` for inference: y = dequant(int32 sum of q_x q_w) + b. Shapes: x (..., in) -> (..., out).

    Build it with :meth:`from_linear`. ``qweight`` (out, in) int8,
    ``weight_scale`` (out,) and ``bias`` (out,) are buffers (in
    ``state_dict``), not Parameters: nothing here trains. ``path``: "int8"
    (int32 accumulation) or "dequantize" (float32 GEMM on the rebuilt weight).
    ``bits`` (default 8) narrows the grid of weights and activations to
    -(2^(bits-1) - 1)..2^(bits-1) - 1, still stored in int8 (to measure
    what fewer bits cost; the file format is 8-bit).

    >>> import numpy as np
    >>> from nptransformer.nn import Linear
    >>> lin = Linear(16, 4)
    >>> q = QuantizedLinear.from_linear(lin)
    >>> x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    >>> bool(np.abs(q(x) - lin(x)).max() < 0.02)
    True
    """

    def __init__(self, qweight: Any, weight_scale: Any, bias: Any = None, path: str = "int8", bits: int = 8):
        super().__init__()
        _checks.check_ndim("qweight", qweight, (2,))
        if str(qweight.dtype) != "int8":
            raise TypeError(f"qweight must be int8, got {qweight.dtype}")
        if tuple(weight_scale.shape) != (qweight.shape[0],):
            raise ValueError(f"weight_scale must have shape ({qweight.shape[0]},), got {tuple(weight_scale.shape)}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.out_features, self.in_features = int(qweight.shape[0]), int(qweight.shape[1])
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.path, self.bits, self.qmax = path, bits, qmax_for_bits(bits)

    @classmethod
    def from_linear(cls, linear: Linear, path: str = "int8", bits: int = 8) -> "QuantizedLinear":
        """Quantize a float :class:`Linear`'s weight per output channel (its bias stays float)."""
        q, scale = quantize_rows(linear.weight.data, qmax_for_bits(bits))
        bias = None if linear.bias is None else linear.bias.data
        return cls(q, scale, bias, path, bits)

    @property
    def weight(self) -> Parameter:
        """The dequantized weight (out, in), rebuilt on each access, for models that read a head's weight
        directly instead of calling the layer (GPT's untied ``lm_head``): those multiply in float."""
        return Parameter(dequantize_rows(self.qweight, self.weight_scale))

    def forward(self, x: Any, activation: str | None = None) -> Any:
        """x (..., in_features) float -> (..., out_features) in x's dtype; ``activation`` as :class:`Linear`'s."""
        _checks.check_float("x", x)
        _checks.check_last_dim("x", x, self.in_features, "in_features")
        xp = get_array_module(x)
        scale = xp.astype(self.weight_scale, x.dtype)
        if self.path == "dequantize":
            y = xp.matmul(x, xp.matrix_transpose(dequantize_rows(self.qweight, scale)))
        else:
            amax = xp.max(xp.abs(x), axis=-1, keepdims=True)
            sx = xp.where(amax > 0, amax / self.qmax, xp.ones_like(amax))  # per token
            qx = xp.astype(xp.clip(xp.round(x / sx), -self.qmax, self.qmax), xp.int32)
            acc = xp.matmul(qx, xp.matrix_transpose(xp.astype(self.qweight, xp.int32)))  # exact: |sum| < 2^31
            y = xp.astype(acc, x.dtype) * sx * scale
        if self.bias is not None:
            y = y + xp.astype(self.bias, x.dtype)
        if activation is not None:
            approximate = "tanh" if activation == "gelu_tanh" else "none"
            y = ops.relu_forward(y)[0] if activation == "relu" else ops.gelu_forward(y, approximate=approximate)[0]
        return y

    def backward(self, dy: Any) -> Any:
        raise RuntimeError("QuantizedLinear is for inference only: train the float model (or use fake_quantize "
                           "for quantization-aware training) and quantize afterwards")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, path={self.path!r}, bits={self.bits}"


def quantize_dynamic(model: Module, path: str = "int8", inplace: bool = False, bits: int = 8) -> Module:
    """``model`` with every :class:`Linear` replaced by a :class:`QuantizedLinear` (a copy unless ``inplace``).

    Other weights (embeddings, attention's fused in-projection, norms) stay
    float in memory; :func:`save_quantized` still stores every weight matrix
    as int8. The result is for inference (it has no backward through the
    quantized layers). ``bits``: see :class:`QuantizedLinear`.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a Module, got {type(model).__name__}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    qmax_for_bits(bits)
    return replace_linears(model, inplace, lambda lin: QuantizedLinear.from_linear(lin, path, bits)).eval()


def replace_linears(model: Module, inplace: bool, convert: Any, keep: tuple = ()) -> Module:
    """``model`` (a copy unless ``inplace``) with every :class:`Linear` child replaced by ``convert(child)``,
    except children that are instances of a type in ``keep`` (layers converted already)."""
    out = model if inplace else copy.deepcopy(model)
    out.clear_saved()
    for parent in list(out.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, Linear) and not isinstance(child, keep):
                setattr(parent, name, convert(child))
    return out
