"""``cross_entropy.rows``: cross-entropy in row blocks, never forming the (N, C) log-probabilities or one-hot.

The reference computes log_softmax(logits) whole, picks the target entries
and saves the (N, C) log-probabilities; its backward builds an (N, C)
one-hot matrix. For a language model's (B*T, V) logits both are large. This
kernel works on blocks of rows (:func:`._rows.over_last_axis`; with
:func:`nptransformer.set_num_threads` above 1, first one slab of rows per
thread): with z = logits - max and log_s = log(sum(exp(z))) from
:func:`.softmax.normalized_exp`, the loss reads -logp[t] = log_s - z[t] and
mean(-logp) = log_s - mean(z) off z, and saves softmax(logits), which the
exponentials gave already. The backward builds one block's one-hot rows at
a time.

>>> import numpy as np
>>> loss, ctx = CrossEntropyRows().forward(np.log(np.array([[0.25, 0.75], [0.5, 0.5]])), np.array([1, -100]))
>>> round(float(loss), 6), CrossEntropyRows().backward(1.0, ctx).round(12).tolist()
(0.287682, [[0.25, -0.25], [0.0, 0.0]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import arange, get_array_module
from ..functional.losses import check_cross_entropy_inputs, reduce_token_losses, token_dloss
from ._rows import ROW_SETTINGS, RowKernel, over_last_axis, row_sums
from .dispatch import register_kernel
from .softmax import normalized_exp


#: Logits from which the rows are split over the pool's threads (with set_num_threads above 1). Forward /
#: backward of 2048 rows, two threads, split against whole: 512 classes 2.15 / 0.81 against 1.83 / 0.36 ms;
#: 2048 classes 6.8 / 2.3 against 7.4 / 1.9; 4096 classes 13.2 / 4.8 against 19.4 / 7.1.
SPLIT_FROM = 1 << 22


def _token_losses(logits: Any, target: Any, smoothing: float) -> tuple[Any, Any]:
    """Rows of logits (r, C) and target ids (r, 1) -> (softmax (r, C), loss per row (r, 1))."""
    xp = get_array_module(logits)
    z, log_s, probs = normalized_exp(logits, axis=-1)
    nll = log_s - xp.take_along_axis(z, target, axis=-1)
    if smoothing:
        nll = (1 - smoothing) * nll + smoothing * (log_s - row_sums(z) / z.shape[-1])
    return probs, nll


def _logit_grads(probs: Any, target: Any, valid: Any, scale: Any, smoothing: float) -> Any:
    """(softmax - ((1 - s) onehot(target) + s / C)) * scale on rows (r, C), exactly 0 where not valid.

    target and valid are (r, 1); scale is a number or (r, 1). On NumPy the one-hot term is subtracted at the
    target entries alone (one entry a row) instead of built as a (r, C) array: two passes over the rows where
    building, subtracting, scaling and masking took five (0.36 against 1.9 ms for (2048, 512) on one thread).
    """
    xp = get_array_module(probs)
    if isinstance(probs, np.ndarray):
        grads = probs * scale  # a fresh array: the target entries are then corrected in place
        if smoothing:
            grads -= smoothing / probs.shape[-1] * scale
        per_row = np.broadcast_to(np.asarray(scale, dtype=grads.dtype), valid.shape).reshape(-1)
        flat = grads.reshape(-1, probs.shape[-1])
        flat[np.arange(flat.shape[0]), np.reshape(target, (-1,))] -= (1 - smoothing) * per_row
        if not valid.all():
            np.copyto(grads, 0.0, where=~valid)  # exactly 0, whatever the row holds (NaN included)
        return grads
    classes = arange(probs.shape[-1], like=target)
    q = xp.astype(target == classes, probs.dtype)  # the target distribution, built in place
    if smoothing:
        q *= 1 - smoothing
        q += smoothing / probs.shape[-1]
    return xp.where(valid, (probs - q) * scale, 0.0)


class CrossEntropyRows(RowKernel):
    """Cross-entropy a block of rows at a time; saves softmax(logits) (..., C), the ids and the mask.

    Applies to NumPy logits of at least ``reference_below`` elements and to
    CuPy logits (:class:`._rows.RowKernel`; on CuPy the rows run whole). Shapes as
    :func:`nptransformer.functional.cross_entropy_forward`. Settings:
    :data:`._rows.ROW_SETTINGS`, the pool's split from :data:`SPLIT_FROM` logits.
    """

    op = "cross_entropy"
    name = "cross_entropy.rows"
    defaults = {**ROW_SETTINGS, "min_elements": SPLIT_FROM}


    def forward(self, logits: Any, target: Any, ignore_index: int = -100, label_smoothing: float = 0.0,
                reduction: str = "mean") -> tuple[Any, tuple]:
        target = check_cross_entropy_inputs(logits, target, ignore_index, label_smoothing, reduction)
        xp = get_array_module(logits, target)
        valid = target != ignore_index  # (...)
        safe = xp.where(valid, target, 0)
        probs, per_token = over_last_axis(lambda z, t: _token_losses(z, t, label_smoothing), logits,
                                          xp.expand_dims(safe, axis=-1), settings=self.settings)
        loss, count = reduce_token_losses(xp.where(valid, per_token[..., 0], 0.0), valid, reduction)
        return loss, (probs, safe, valid, count, label_smoothing, reduction)

    def backward(self, dloss: Any, ctx: tuple) -> Any:
        probs, safe, valid, count, smoothing, reduction = ctx
        xp = get_array_module(probs)
        rows = (probs, xp.expand_dims(safe, axis=-1), xp.expand_dims(valid, axis=-1))  # row-aligned (..., 1)
        scale = token_dloss(dloss, valid, count, reduction)
        if reduction == "none" and valid.ndim:  # a (..., 1) column of per-token gradients, cut with the rows
            return over_last_axis(lambda p, t, v, f: _logit_grads(p, t, v, f, smoothing), *rows, scale,
                                  settings=self.settings)
        return over_last_axis(lambda p, t, v: _logit_grads(p, t, v, scale, smoothing), *rows,
                              settings=self.settings)


register_kernel(CrossEntropyRows())
