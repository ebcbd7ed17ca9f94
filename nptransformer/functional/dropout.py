"""Inverted dropout: zero each entry with probability p, scale the survivors by 1/(1-p).

The scaling happens at training time, so E[y] = x and evaluation is the identity.

>>> import numpy as np
>>> from nptransformer import backend
>>> from nptransformer.functional import dropout_forward, dropout_backward
>>> y, ctx = dropout_forward(np.ones(6), p=0.5, generator=backend.Generator(0))
>>> sorted(set(y.tolist()))  # dropped, or kept and doubled
[0.0, 2.0]
>>> bool((dropout_backward(np.ones(6), ctx) == y).all())  # the gradient goes where x went
True
>>> x = np.ones(3)
>>> dropout_forward(x, p=0.5, training=False)[0] is x
True

Derivation: docs/ops/dropout.md.
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..registry import Case, register_op


def dropout_forward(x: Any, p: float = 0.5, training: bool = True, generator: Any = None) -> tuple[Any, tuple]:
    """y = x * mask / (1 - p), mask ~ Bernoulli(1 - p) per entry. Shapes: x (...) -> y (same).

    ``generator``: a :class:`~nptransformer.backend.Generator`; None uses
    ``backend.default_generator``. With ``training=False`` or ``p == 0``, x
    itself is returned (no copy) and backward is the identity. Saves only the
    boolean mask (and the scale 1/(1-p)).
    """
    check_dropout_inputs(x, p, training, generator)
    if not training or p == 0:
        return x, (None, 1.0)
    xp = get_array_module(x)
    keep = keep_mask(tuple(x.shape), p, generator, like=x)
    scale = 1.0 / (1.0 - p)
    return xp.where(keep, x * scale, 0.0), (keep, scale)


def check_dropout_inputs(x: Any, p: float, training: bool, generator: Any) -> None:
    """dropout_forward's argument checks (kernels run them too): x a float array, p a probability, training a
    bool, generator a :class:`~nptransformer.backend.Generator` or None."""
    _checks.check_float("x", x)
    _checks.check_probability("p", p)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if generator is not None and not isinstance(generator, backend.Generator):
        raise TypeError(f"generator must be a nptransformer.backend.Generator or None, got {type(generator).__name__}")


def keep_mask(shape: tuple, p: float, generator: Any = None, like: Any = None) -> Any:
    """The boolean mask of the entries dropout keeps, each kept with probability 1 - p: shape ``shape``, or None
    when p == 0 (nothing drawn). The draw :func:`dropout_forward` makes, so a kernel that draws it for the same
    shape from the same generator state drops the same entries. ``generator``: None uses
    ``backend.default_generator``, read per call so that a replaced default takes effect."""
    if p == 0:
        return None
    return (backend.default_generator if generator is None else generator).bernoulli(shape, 1.0 - p, like=like)


def dropout_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy * mask / (1 - p): the same mask and scale as the forward (dy itself when it was the identity).

    Derivation: docs/ops/dropout.md."""
    keep, scale = ctx
    if keep is None:
        return dy
    xp = get_array_module(dy)
    return xp.where(keep, dy * scale, 0.0)


def _example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 3, 4)),), {"p": 0.3, "training": True})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        x = draw(t.float_arrays(t.shapes(0, 3)))
        return Case((x,), {"p": draw(t.st.sampled_from([0.0, 0.3, 0.9])), "training": draw(t.st.booleans())})

    return cases()


register_op("dropout", dropout_forward, dropout_backward, example=_example, cases=_cases)
