"""``layer_norm.rows`` and ``rms_norm.rows``: the norms over the last axis in cache-sized row blocks.

The reference evaluates each operator over the whole (..., C) array. These
kernels cut the rows into blocks (:func:`._rows.over_last_axis`; with
:func:`nptransformer.set_num_threads` above 1, first one slab of rows per
thread), normalise in place, and take the row sums as :func:`._rows.row_sums`
and :func:`._rows.row_dots` do (the variance's sum of squares without the
squares); the weight and bias gradients are
:func:`._rows.column_sums`. Arrays of up to ``whole_elements`` are left
whole (on the (2048, 256) layer-norm input of the default config the split
only added calls).

>>> import numpy as np
>>> y, ctx = LayerNormRows().forward(np.array([[1.0, 3.0]]), eps=0.0)
>>> y.tolist(), LayerNormRows().backward(np.ones((1, 2)), ctx)[0].tolist()
([[-1.0, 1.0]], [[0.0, 0.0]])
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from ..functional.normalization import check_norm_inputs
from ._rows import RowKernel, column_sums, over_last_axis, row_dots, row_sums
from .dispatch import register_kernel


def _layer_norm_rows(x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """Rows x (r, C) -> (y, xhat, rstd (r, 1))."""
    xp = get_array_module(x)
    n = x.shape[-1]
    xc = x - row_sums(x) / n
    rstd = 1.0 / xp.sqrt(row_dots(xc, xc) / n + eps)
    xc *= rstd  # now xhat
    if weight is None:
        return (xc if bias is None else xc + bias), xc, rstd
    y = xc * weight
    if bias is not None:
        y += bias
    return y, xc, rstd


def _layer_norm_grad_rows(dy: Any, xhat: Any, rstd: Any, weight: Any) -> Any:
    n = dy.shape[-1]
    g = dy if weight is None else dy * weight
    mean_g = row_sums(g) / n
    mean_gx = row_dots(g, xhat) / n
    dx = g - mean_g  # a fresh array even when g is dy
    dx -= xhat * mean_gx
    dx *= rstd
    return dx


def _rms_norm_rows(x: Any, weight: Any, eps: float) -> tuple[Any, Any, Any]:
    """Rows x (r, C) -> (y, xhat, rstd (r, 1))."""
    xp = get_array_module(x)
    rstd = 1.0 / xp.sqrt(row_dots(x, x) / x.shape[-1] + eps)
    xhat = x * rstd
    return (xhat if weight is None else xhat * weight), xhat, rstd


def _rms_norm_grad_rows(dy: Any, xhat: Any, rstd: Any, weight: Any) -> Any:
    g = dy if weight is None else dy * weight
    dx = xhat * (row_dots(g, xhat) / g.shape[-1])
    dx -= g
    dx *= -rstd  # rstd (g - xhat mean(g xhat))
    return dx


class LayerNormRows(RowKernel):
    """Layer norm in row blocks, normalised in place; saves what the reference saves.

    Applies as :class:`._rows.RowKernel` says (NumPy arrays of at least
    ``reference_below`` elements, CuPy arrays). Shapes and context as
    :func:`nptransformer.functional.layer_norm_forward`. Settings:
    :data:`._rows.ROW_SETTINGS`.
    """

    op = "layer_norm"
    name = "layer_norm.rows"


    def forward(self, x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> tuple[Any, tuple]:
        check_norm_inputs(x, weight, bias, eps)
        y, xhat, rstd = over_last_axis(lambda rows: _layer_norm_rows(rows, weight, bias, eps), x,
                                       settings=self.settings)
        return y, (xhat, rstd, weight, bias is not None)

    def backward(self, dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
        xhat, rstd, weight, has_bias = ctx
        dx = over_last_axis(lambda d, xh, r: _layer_norm_grad_rows(d, xh, r, weight), dy, xhat, rstd,
                            settings=self.settings)
        dweight = None if weight is None else column_sums(dy * xhat)
        dbias = column_sums(dy) if has_bias else None
        return dx, dweight, dbias


class RMSNormRows(RowKernel):
    """RMS norm in row blocks; saves what the reference saves.

    Applies as :class:`._rows.RowKernel` says (NumPy arrays of at least
    ``reference_below`` elements, CuPy arrays). Shapes and context as
    :func:`nptransformer.functional.rms_norm_forward`. Settings:
    :data:`._rows.ROW_SETTINGS`.
    """

    op = "rms_norm"
    name = "rms_norm.rows"


    def forward(self, x: Any, weight: Any = None, eps: float | None = None) -> tuple[Any, tuple]:
        check_norm_inputs(x, weight, None, eps)
        if eps is None:
            eps = float(get_array_module(x).finfo(x.dtype).eps)
        y, xhat, rstd = over_last_axis(lambda rows: _rms_norm_rows(rows, weight, eps), x, settings=self.settings)
        return y, (xhat, rstd, weight)

    def backward(self, dy: Any, ctx: tuple) -> tuple[Any, Any]:
        xhat, rstd, weight = ctx
        dx = over_last_axis(lambda d, xh, r: _rms_norm_grad_rows(d, xh, r, weight), dy, xhat, rstd,
                            settings=self.settings)
        return dx, None if weight is None else column_sums(dy * xhat)


register_kernel(LayerNormRows())
register_kernel(RMSNormRows())
