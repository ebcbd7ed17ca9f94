"""The hyperbolic tangent, elementwise: BERT's pooler squashes its [CLS] vector with it.

>>> import numpy as np
>>> from nptransformer.functional import tanh_forward, tanh_backward
>>> y, ctx = tanh_forward(np.array([0.0, 1.0]))
>>> y.round(6).tolist(), tanh_backward(np.ones(2), ctx).round(6).tolist()  # tanh'(0) = 1
([0.0, 0.761594], [1.0, 0.419974])

Derivation of the backward: docs/ops/tanh.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import get_array_module
from ..registry import Case, register_op


def tanh_forward(x: Any) -> tuple[Any, tuple]:
    """y = tanh(x) = (e^x - e^-x) / (e^x + e^-x). Shapes: x (...) -> y (same).

    Saves y only: the derivative 1 - y^2 is a function of the output.
    """
    _checks.check_float("x", x)
    y = get_array_module(x).tanh(x)
    return y, (y,)


def tanh_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy * (1 - y^2), y = tanh(x). Derivation: docs/ops/tanh.md."""
    (y,) = ctx
    return dy * (1.0 - y * y)


def _example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)),))


def _cases(t: Any) -> Any:
    return t.float_arrays(t.shapes(0, 3), low=-4.0, high=4.0).map(lambda x: Case((x,)))


register_op("tanh", tanh_forward, tanh_backward, example=_example, cases=_cases)
