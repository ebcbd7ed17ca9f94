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
from ..registry import Case, register_op
from .softmax import log_softmax_forward

REDUCTIONS = ("mean", "sum", "none")


def check_cross_entropy_inputs(logits: Any, target: Any, ignore_index: int, label_smoothing: float,
                               reduction: str) -> Any:
    """The argument checks of :func:`cross_entropy_forward`, shared with its kernel; returns target as int64."""
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
    xp = get_array_module(logits, target)
    target = xp.astype(target, dtype_of(xp, "int64"))  # uint8 ids cannot even be compared with -100
    _checks.check_token_ids("target", target, logits.shape[-1], "class ids", ignore_index=ignore_index)
    return target


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
    Saves the log-probabilities (the backward needs softmax = exp(logp)),
    the target ids and the mask of counted tokens.
    """
    target = check_cross_entropy_inputs(logits, target, ignore_index, label_smoothing, reduction)
    xp = get_array_module(logits, target)
    logp, _ = log_softmax_forward(logits, axis=-1)  # (..., C)
    valid = target != ignore_index  # (...)
    safe = xp.where(valid, target, 0)  # any in-range id: the ignored tokens' terms are dropped below
    nll = -xp.take_along_axis(logp, xp.expand_dims(safe, axis=-1), axis=-1)[..., 0]  # -logp[target]: (...)
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * xp.mean(logp, axis=-1)
    loss, count = reduce_token_losses(xp.where(valid, nll, 0.0), valid, reduction)
    return loss, (logp, safe, valid, count, label_smoothing, reduction)


def cross_entropy_backward(dloss: Any, ctx: tuple) -> Any:
    """dlogits = (softmax(logits) - ((1 - s) onehot(target) + s / C)) * dloss_token,

    with dloss_token = dloss / N_valid ("mean"), dloss ("sum") or dloss[...]
    ("none"), and 0 on ignored tokens. ``dloss``: a 0-d array or a Python
    float for "mean"/"sum", an array of the target's shape for "none" (or a
    number, when the target is 0-d).
    Derivation: docs/ops/cross_entropy.md.
    """
    logp, safe, valid, count, smoothing, reduction = ctx
    xp = get_array_module(logp)
    num_classes = logp.shape[-1]
    scale = token_dloss(dloss, valid, count, reduction)  # forward: loss = sum(per_token) [/ count]
    onehot = xp.astype(xp.expand_dims(safe, axis=-1) == arange(num_classes, like=safe), logp.dtype)  # (..., C)
    q = (1 - smoothing) * onehot + smoothing / num_classes  # forward: per_token = -sum_c q_c logp_c
    dlogits = (xp.exp(logp) - q) * scale  # forward: logp = log_softmax(logits), and sum_c q_c = 1
    return xp.where(xp.expand_dims(valid, axis=-1), dlogits, 0.0)  # forward: per_token = 0 where ignored


def reduce_token_losses(per_token: Any, valid: Any, reduction: str) -> tuple[Any, Any]:
    """The per-token losses (...) (0 where ignored) -> (loss, count): count is max(N_valid, 1) for "mean", else None."""
    xp = get_array_module(per_token)
    if reduction == "none":
        return per_token, None
    if reduction == "sum":
        return xp.sum(per_token), None
    # max(count, 1): with every token ignored the sum is 0, so the mean is 0, not 0/0
    count = xp.maximum(xp.sum(xp.astype(valid, per_token.dtype)), 1.0)
    return xp.sum(per_token) / count, count


def token_dloss(dloss: Any, valid: Any, count: Any, reduction: str) -> Any:
    """The loss's gradient per token: a number, or for "none" dloss as an (..., 1) column (checked against valid's shape;
    a number will do for a single token's 0-d loss)."""
    if reduction == "none" and tuple(getattr(dloss, "shape", ())) != tuple(valid.shape):
        raise ValueError(
            f"dloss must be an array of shape {tuple(valid.shape)} for reduction='none', "
            f"got {getattr(dloss, 'shape', type(dloss).__name__)}"
        )
    if reduction == "none":
        return get_array_module(valid).expand_dims(dloss, axis=-1) if hasattr(dloss, "shape") else dloss
    return dloss if count is None else dloss / count


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
