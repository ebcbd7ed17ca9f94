"""Cross-entropy over the last (class) axis, with ignore_index and label smoothing.

>>> import numpy as np
>>> from nptransformer.functional import cross_entropy_forward, cross_entropy_backward
>>> logits = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
>>> loss, ctx = cross_entropy_forward(logits, np.array([1, -100]))  # the second token is ignored
>>> bool(np.isclose(loss, -np.log(0.75)))
True
>>> cross_entropy_backward(1.0, ctx).round(12).tolist()  # softmax - onehot, on the counted token only
[[0.25, -0.25], [0.0, 0.0]]

Derivation: docs/ops/cross_entropy.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import arange, dtype_of, get_array_module
from ._blocks import over_last_axis, row_sums
from ..registry import Case, register_op
from .softmax import normalized_exp

REDUCTIONS = ("mean", "sum", "none")


def cross_entropy_forward(
    logits: Any, target: Any, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean"
) -> tuple[Any, tuple]:
    """Cross-entropy of ``softmax(logits)`` against class ids, class axis LAST.

    Shapes: logits (..., C) float, e.g. (B, T, V); target (...) integer, e.g.
    (B, T). Per token, with s = ``label_smoothing`` and logp = log_softmax(logits):

        loss = (1 - s) * (-logp[target]) + s * mean_c(-logp[c])

    and 0 where target == ``ignore_index``. ``reduction``: "mean" (over the
    non-ignored tokens; 0-d result), "sum" (0-d) or "none" (shape (...)).
    Equals ``torch.nn.functional.cross_entropy(logits.reshape(-1, C),
    target.reshape(-1), ...)``, except that a "mean" over a batch whose tokens
    are all ignored is 0 with zero gradient here, where PyTorch gives nan.
    Saves softmax(logits), the target ids and the mask of counted tokens.
    """
    _checks.check_float("logits", logits)
    _checks.check_ndim("logits", logits, range(1, 33))
    _checks.check_int("target", target)
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target must have shape {tuple(logits.shape[:-1])} (logits' shape without the class axis, "
            f"logits is {tuple(logits.shape)}), got {tuple(target.shape)}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    _checks.check_probability("label_smoothing", label_smoothing, allow_one=True)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    num_classes = logits.shape[-1]
    xp = get_array_module(logits, target)
    target = xp.astype(target, dtype_of(xp, "int64"))  # uint8 ids cannot even be compared with -100
    _checks.check_token_ids("target", target, num_classes, "class ids", ignore_index=ignore_index)

    column = tuple(target.shape) + (1,)  # (...) -> (..., 1): a row-aligned column of ids
    valid = target != ignore_index  # (...)
    safe = xp.where(valid, target, 0)  # any in-range id; its term is masked out below
    probs, per_token = over_last_axis(lambda z, t: _token_losses(z, t, label_smoothing), logits,
                                      xp.reshape(safe, column))
    per_token = xp.where(valid, per_token[..., 0], 0.0)
    if reduction == "none":
        loss, count = per_token, None
    elif reduction == "sum":
        loss, count = xp.sum(per_token), None
    else:
        # max(count, 1): with every token ignored the sum is 0, so the mean is 0, not 0/0
        count = xp.maximum(xp.sum(xp.astype(valid, logits.dtype)), 1.0)
        loss = xp.sum(per_token) / count
    return loss, (probs, safe, valid, count, label_smoothing, reduction)


def cross_entropy_backward(dloss: Any, ctx: tuple) -> Any:
    """dlogits = (softmax(logits) - ((1 - s) onehot(target) + s / C)) * dloss_token,

    with dloss_token = dloss / N_valid ("mean"), dloss ("sum") or dloss[...]
    ("none"), and 0 on ignored tokens. ``dloss``: a 0-d array or a Python
    float for "mean"/"sum", an array of the target's shape for "none".
    Derivation: docs/ops/cross_entropy.md.
    """
    probs, safe, valid, count, smoothing, reduction = ctx
    xp = get_array_module(probs)
    column = tuple(valid.shape) + (1,)  # (...) -> (..., 1): row-aligned, to broadcast over the classes
    rows = (probs, xp.reshape(safe, column), xp.reshape(valid, column))
    if reduction == "none":
        if not hasattr(dloss, "shape") or tuple(dloss.shape) != tuple(valid.shape):
            raise ValueError(
                f"dloss must be an array of shape {tuple(valid.shape)} for reduction='none', "
                f"got {getattr(dloss, 'shape', type(dloss).__name__)}"
            )
        return over_last_axis(lambda p, t, v, f: _logit_grads(p, t, v, f, smoothing), *rows, xp.reshape(dloss, column))
    scale = dloss if count is None else dloss / count  # forward: loss = sum(per_token) [/ count]
    return over_last_axis(lambda p, t, v: _logit_grads(p, t, v, scale, smoothing), *rows)


def _token_losses(logits: Any, target: Any, smoothing: float) -> tuple[Any, Any]:
    """Rows of logits (r, C) and target ids (r, 1) -> (softmax (r, C), loss per row (r, 1)).

    With logp = z - log_s (z = logits - max), logp[t] and mean(logp) are read
    off z directly, so the (r, C) log-probabilities are never formed.
    """
    xp = get_array_module(logits)
    z, log_s, probs = normalized_exp(logits, axis=-1)
    nll = log_s - xp.take_along_axis(z, target, axis=-1)
    if smoothing:
        nll = (1 - smoothing) * nll + smoothing * (log_s - row_sums(z) / z.shape[-1])
    return probs, nll


def _logit_grads(probs: Any, target: Any, valid: Any, scale: Any, smoothing: float) -> Any:
    """(softmax - ((1 - s) onehot(target) + s / C)) * scale on rows (r, C), exactly 0 where not valid.

    target and valid are (r, 1); scale is a number or (r, 1). The one-hot
    matrix exists only for this block of rows.
    """
    xp = get_array_module(probs)
    classes = arange(probs.shape[-1], like=target)
    q = xp.astype(target == classes, probs.dtype)  # the target distribution, built in place
    if smoothing:
        q *= 1 - smoothing
        q += smoothing / probs.shape[-1]
    return xp.where(valid, (probs - q) * scale, 0.0)


def _example(rng: Any) -> Case:
    target = rng.integers(0, 5, size=(2, 3))
    target[0, 1] = -100
    return Case((rng.normal(size=(2, 3, 5)), target), {"label_smoothing": 0.1})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead, num_classes = draw(t.shapes(0, 2, max_side=3)), draw(t.sides(1, 5))
        ignore_index = draw(t.st.sampled_from([-100, -1]))
        target = draw(t.token_ids(lead, num_classes))
        target[draw(t.bool_masks(lead))] = ignore_index  # mask probability 1.0 included: all ignored
        kwargs = {
            "ignore_index": ignore_index,
            "label_smoothing": draw(t.st.sampled_from([0.0, 0.1])),
            "reduction": draw(t.st.sampled_from(REDUCTIONS)),
        }
        return Case((draw(t.float_arrays(lead + (num_classes,), low=-3.0, high=3.0)), target), kwargs)

    return cases()


register_op("cross_entropy", cross_entropy_forward, cross_entropy_backward, example=_example, cases=_cases)
