"""Knowledge-distillation loss: softened KL to a teacher, times T^2, plus weighted hard-label cross-entropy.

>>> import numpy as np
>>> from nptransformer.functional import distillation_forward, distillation_backward
>>> s = np.array([[1.0, 2.0, 0.5]]); t = s.copy()
>>> loss, ctx = distillation_forward(s, t, np.array([1]), temperature=2.0, alpha=1.0)
>>> float(loss)  # the student already equals the teacher: KL = 0
0.0

Derivation: docs/ops/distillation.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import arange, get_array_module
from ..registry import Case, register_op
from .losses import check_cross_entropy_inputs
from .softmax import log_softmax_forward


def check_distillation_inputs(student: Any, teacher: Any, temperature: float, alpha: float) -> None:
    """The checks beyond cross-entropy's: teacher logits like the student's, T > 0, alpha in [0, 1]."""
    _checks.check_float("student", student)  # before cross-entropy's checks, which call it "logits"
    _checks.check_float("teacher", teacher)
    _checks.check_same_dtype(student=student, teacher=teacher)
    if tuple(teacher.shape) != tuple(student.shape):
        raise ValueError(f"teacher must have the student's shape {tuple(student.shape)}, got {tuple(teacher.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    _checks.check_probability("alpha", alpha, allow_one=True)


def distillation_forward(student: Any, teacher: Any, target: Any, temperature: float = 2.0, alpha: float = 0.5,
                         ignore_index: int = -100) -> tuple[Any, tuple]:
    """Mean over the counted tokens of

        alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, target)

    Shapes: student, teacher (..., C) logits, e.g. (B, T, V); target (...)
    ids; a token whose target is ``ignore_index`` counts in neither term.
    T^2 keeps the soft term's gradient on the scale of the hard one's as T
    grows (Hinton et al., 2015). The teacher gets no gradient. Returns a 0-d loss.
    """
    check_distillation_inputs(student, teacher, temperature, alpha)
    target = check_cross_entropy_inputs(student, target, ignore_index, 0.0, "mean")
    xp = get_array_module(student, teacher, target)
    T = float(temperature)
    logq, _ = log_softmax_forward(student / T, axis=-1)  # student, softened
    logp, _ = log_softmax_forward(teacher / T, axis=-1)  # teacher, softened
    p = xp.exp(logp)
    kl = xp.sum(p * (logp - logq), axis=-1)  # (...)
    logs, _ = log_softmax_forward(student, axis=-1)
    valid = target != ignore_index
    safe = xp.where(valid, target, xp.zeros_like(target))
    onehot = xp.astype(xp.expand_dims(safe, axis=-1) == arange(student.shape[-1], like=safe), student.dtype)
    ce = -xp.sum(onehot * logs, axis=-1)
    w = xp.astype(valid, student.dtype)
    count = xp.maximum(xp.sum(w), 1.0)
    loss = xp.sum(w * (alpha * T * T * kl + (1.0 - alpha) * ce)) / count
    return loss, (xp.exp(logq), p, xp.exp(logs), onehot, w, count, T, alpha)


def distillation_backward(dloss: Any, ctx: tuple) -> Any:
    """d student = dloss * w / N * (alpha * T * (q_T - p_T) + (1 - alpha) * (softmax(student) - onehot)),
    with q_T, p_T the softened student and teacher distributions. Derivation: docs/ops/distillation.md."""
    q, p, s, onehot, w, count, T, alpha = ctx
    xp = get_array_module(q, p)
    g = xp.expand_dims(w / count, axis=-1) * dloss  # forward: loss = sum(w * (...)) / count
    soft = alpha * T * (q - p)  # forward: alpha * T^2 * KL(p_T || q_T), d/dz = T^2 * (q_T - p_T) / T
    hard = (1.0 - alpha) * (s - onehot)  # forward: (1 - alpha) * -log softmax(student)[target]
    return g * (soft + hard)


def _example(rng: Any) -> Case:
    target = rng.integers(0, 5, size=(2, 3))
    target[0, 1] = -100
    return Case((rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5)), target),
                {"temperature": 2.0, "alpha": 0.7})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        shape = draw(t.shapes(1, 2))
        c = draw(t.st.integers(2, 6))
        student = draw(t.float_arrays(shape + (c,), low=-3.0, high=3.0))
        teacher = draw(t.float_arrays(shape + (c,), low=-3.0, high=3.0))
        target = draw(t.token_ids(shape, c))
        return Case((student, teacher, target), {"temperature": draw(t.st.floats(0.5, 5.0)),
                                                 "alpha": draw(t.st.floats(0.0, 1.0))})

    return cases()


register_op("distillation", distillation_forward, distillation_backward, example=_example, cases=_cases)
