"""Batch normalization: each channel normalised over the batch (every axis but the last).

Layer norm normalises one token's C features; batch norm normalises one
feature over the N rows of the batch, so a row's output depends on its
batch-mates (and on padding rows) in training, and on the running
statistics only in evaluation.

>>> import numpy as np
>>> from nptransformer.functional import batch_norm_forward, batch_norm_backward
>>> y, ctx = batch_norm_forward(np.array([[1.0], [3.0]]), eps=0.0)
>>> y.tolist()
[[-1.0], [1.0]]
>>> y, ctx = batch_norm_forward(np.array([[1.0], [3.0]]), running_mean=np.array([1.0]),
...                             running_var=np.array([4.0]), eps=0.0)
>>> y.tolist()  # evaluation: the given statistics, whatever the batch
[[0.0], [1.0]]

Derivations: docs/ops/batch_norm.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module
from ..registry import Case, register_op
from .normalization import _sum_rows, check_norm_inputs


def batch_statistics(x: Any) -> tuple[Any, Any]:
    """Per-channel mean and biased variance of x (..., C) over every leading axis -> two (C,) arrays."""
    xp = get_array_module(x)
    rows = xp.reshape(x, (-1, x.shape[-1]))
    mean = xp.mean(rows, axis=0)
    return mean, xp.mean((rows - mean) ** 2, axis=0)


def batch_norm_forward(x: Any, weight: Any = None, bias: Any = None, running_mean: Any = None,
                       running_var: Any = None, eps: float = 1e-5) -> tuple[Any, tuple]:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (the last axis).

    Shapes: x (..., C) channels last (N rows = the product of the leading
    axes, at least 2 with batch statistics), weight, bias, running_mean and
    running_var (C,) or None. Without running statistics mean and var are
    the batch's (biased variance, as torch in training); with both they are
    those constants (torch's evaluation mode). Saves xhat, rstd (C,), weight
    and whether the statistics came from the batch.
    """
    check_norm_inputs(x, weight, bias, eps)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (evaluation) or both be None "
                         f"(batch statistics), got running_mean={_kind(running_mean)}, "
                         f"running_var={_kind(running_var)}")
    xp = get_array_module(x)
    if running_mean is None:
        n_rows = x.size // x.shape[-1] if x.shape[-1] else 0
        if n_rows < 2:
            raise ValueError(f"batch statistics need at least 2 rows per channel, got x of shape {tuple(x.shape)} "
                             f"({n_rows} row); pass running_mean and running_var to normalise a single row")
        mean, var = batch_statistics(x)
    else:
        for name, s in (("running_mean", running_mean), ("running_var", running_var)):
            _checks.check_float(name, s)
            if tuple(s.shape) != (x.shape[-1],):
                raise ValueError(f"{name} must have shape ({x.shape[-1]},) to match x's last axis, got {tuple(s.shape)}")
        _checks.check_same_dtype(x=x, running_mean=running_mean, running_var=running_var)
        mean, var = running_mean, running_var
    rstd = 1.0 / xp.sqrt(var + eps)  # (C,)
    xhat = (x - mean) * rstd
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias
    return y, (xhat, rstd, weight, bias is not None, running_mean is None)


def batch_norm_backward(dy: Any, ctx: tuple) -> tuple[Any, Any, Any]:
    """Gradients of batch norm: returns (dx, dweight or None, dbias or None).

    g = dy * weight. Batch statistics: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), the means
    over the N rows (each channel's mean and variance depend on every row). Given statistics:
    dx = rstd * g. Both: dweight = sum(dy * xhat), dbias = sum(dy) over the rows.
    Derivation: docs/ops/batch_norm.md.
    """
    xhat, rstd, weight, has_bias, batch_stats = ctx
    g = dy if weight is None else dy * weight  # forward: y = xhat * weight + bias
    if batch_stats:
        n = xhat.size // xhat.shape[-1]
        mean_g = _sum_rows(g) / n  # forward: mean = mean over rows of x
        mean_gx = _sum_rows(g * xhat) / n  # forward: var = mean over rows of (x - mean)^2
        dx = rstd * (g - mean_g - xhat * mean_gx)  # forward: xhat = (x - mean) * rstd, every term undone
    else:
        dx = g * rstd  # forward: xhat = (x - running_mean) * rstd, constants
    dweight = None if weight is None else _sum_rows(dy * xhat)  # forward: y = xhat * weight, in every row
    dbias = _sum_rows(dy) if has_bias else None  # forward: y = ... + bias, in every row
    return dx, dweight, dbias


def _kind(a: Any) -> str:
    return "None" if a is None else f"an array of shape {tuple(a.shape)}"


def _example(rng: Any) -> Case:
    # eps = 0.1: at eps = 1e-5 the checker's input gradient on this example peaked at 3e-5, so its
    # relative error (1.5e-4, absolute 5e-9) measured rounding rather than the formula
    return Case((rng.normal(size=(4, 3, 5)), rng.normal(size=5), rng.normal(size=5)), {"eps": 0.1})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        c = draw(t.sides(1, 4))
        # >= 3 rows per channel, |x| >= 0.3: with 2 rows xhat is +-1 and the gradient is rounding noise
        # (the same reason layer norm starts at C = 3)
        shape = (draw(t.sides(3, 5)),) + draw(t.shapes(0, 1, max_side=3)) + (c,)
        x = draw(t.float_arrays(shape, min_magnitude=0.3))
        optional = t.st.one_of(t.st.none(), t.float_arrays((c,)))
        stats = (None, None)  # positional: the checker moves positional arrays to the backend under test
        if draw(t.st.booleans()):
            stats = (draw(t.float_arrays((c,))), draw(t.float_arrays((c,), min_magnitude=0.1)) ** 2)
        return Case((x, draw(optional), draw(optional), *stats), {"eps": draw(t.st.sampled_from([1e-5, 0.1]))})

    return cases()


register_op("batch_norm", batch_norm_forward, batch_norm_backward, example=_example, cases=_cases,
            differentiable=(0, 1, 2))
