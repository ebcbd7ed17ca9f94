"""Positional encodings: sinusoidal (added to the input) and rotary (RoPE, a rotation of it).

Both use the angles  angle[pos, i] = pos * base^(-2i/dim),  computed in
float64 and cast to the input's dtype at the end, so positions in the
thousands keep their accuracy in float32.

>>> import numpy as np
>>> from nptransformer.functional import sinusoidal_table, rope_forward, rope_backward
>>> sinusoidal_table(2, 4, dtype="float64").round(4).tolist()    # row 0: sin 0, cos 0, ...
[[0.0, 1.0, 0.0, 1.0], [0.8415, 0.5403, 0.01, 1.0]]
>>> x = np.array([[1.0, 0.0]])                                # (T, D) = (1, 2): one pair
>>> y, ctx = rope_forward(x, offset=1, base=1.0)              # rotate by 1 radian
>>> y.round(4).tolist()
[[0.5403, 0.8415]]
>>> rope_backward(y, ctx).round(12).tolist()                  # the inverse rotation
[[1.0, 0.0]]

Derivation: docs/ops/positional.md.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..backend import dtype_of, get_array_module
from ..registry import Case, register_op


def _angles(n_positions: int, offset: int, n_freqs: int, dim: int, base: float, like: Any) -> Any:
    """(n_positions, n_freqs) float64: (offset + t) * base^(-2i/dim)."""
    xp = get_array_module(like)
    pos = backend.arange(n_positions, dtype="float64", like=like) + float(offset)
    i = backend.arange(n_freqs, dtype="float64", like=like)
    inv_freq = xp.exp(i * (-2.0 * math.log(base) / dim))  # base^(-2i/dim)
    return xp.reshape(pos, (-1, 1)) * xp.reshape(inv_freq, (1, -1))


def _sinusoid(n_positions: int, offset: int, dim: int, base: float, like: Any) -> Any:
    """(n_positions, dim) float64: columns 2i and 2i+1 are sin and cos of angle i."""
    xp = get_array_module(like)
    angles = _angles(n_positions, offset, (dim + 1) // 2, dim, base, like)
    table = xp.stack([xp.sin(angles), xp.cos(angles)], axis=-1)  # (T, ceil(dim/2), 2): interleave
    return xp.reshape(table, (n_positions, -1))[:, :dim]  # an odd dim drops the last cos


def _check_base(base: float) -> None:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0:
        raise ValueError(f"base must be a positive number, got {base!r}")


def _check_offset(offset: int) -> None:
    _checks.check_int_at_least("offset", offset, 0, "a non-negative integer (the position of the first row)")


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0, dtype: Any = "float32", like: Any = None) -> Any:
    """The "Attention Is All You Need" position table, shape (n_positions, dim):

        PE[pos, 2i] = sin(pos / base^(2i/dim)),   PE[pos, 2i+1] = cos(pos / base^(2i/dim)).

    An odd ``dim`` is allowed (the last column is a sin). The table is created
    on the backend and device of ``like`` (default: the current backend). Not an
    op: it has no input to differentiate; :func:`sinusoidal_forward` adds it.
    """
    _checks.check_positive_int("n_positions", n_positions)
    _checks.check_positive_int("dim", dim)
    _check_base(base)
    table = _sinusoid(n_positions, 0, dim, base, like)
    xp = get_array_module(table)
    return xp.astype(table, dtype_of(xp, dtype))


def sinusoidal_forward(x: Any, offset: int = 0, base: float = 10000.0) -> tuple[Any, None]:
    """y = x + PE[offset : offset + T] (see :func:`sinusoidal_table`).

    Shapes: x (..., T, C) -> y (same); the table (T, C) broadcasts over the
    leading axes. ``offset`` is the position of x's first row (decoding with a
    cache). Saves nothing: the backward is the identity.
    """
    _checks.check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., T, C), got shape {tuple(x.shape)}")
    _check_offset(offset)
    _check_base(base)
    xp = get_array_module(x)
    t, c = x.shape[-2], x.shape[-1]
    pe = xp.astype(_sinusoid(t, offset, c, base, like=x), x.dtype)  # (T, C)
    return x + pe, None


def sinusoidal_backward(dy: Any, ctx: None) -> Any:
    """dx = dy: the table is a constant added to x. Derivation: docs/ops/positional.md."""
    return dy


def _rotate_half(x: Any) -> Any:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis: a quarter turn of each pair (i, i + D/2)."""
    xp = get_array_module(x)
    half = x.shape[-1] // 2
    return xp.concat([-x[..., half:], x[..., :half]], axis=-1)


def rope_forward(x: Any, offset: int = 0, base: float = 10000.0) -> tuple[Any, tuple]:
    """Rotary position embedding, "rotate-half" layout (GPT-NeoX, Hugging Face LLaMA).

    Shapes: x (..., T, D), D even -> y (same). Row t (position offset + t)
    rotates each pair (x[i], x[i + D/2]) by the angle (offset + t) * base^(-2i/D):

        y[i]       = x[i] cos - x[i + D/2] sin,
        y[i + D/2] = x[i] sin + x[i + D/2] cos,   i.e.  y = x cos + rotate_half(x) sin.

    Saves the (T, D) cos and sin tables.
    """
    _checks.check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., T, D), got shape {tuple(x.shape)}")
    t, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"x must have an even last dimension D (rotary pairs i and i + D/2), got shape {tuple(x.shape)}")
    _check_offset(offset)
    _check_base(base)
    xp = get_array_module(x)
    angles = _angles(t, offset, d // 2, d, base, like=x)  # (T, D/2)
    angles = xp.concat([angles, angles], axis=-1)  # (T, D): pair (i, i + D/2) shares angle i
    cos, sin = xp.astype(xp.cos(angles), x.dtype), xp.astype(xp.sin(angles), x.dtype)
    return x * cos + _rotate_half(x) * sin, (cos, sin)


def rope_backward(dy: Any, ctx: tuple) -> Any:
    """dx = dy cos - rotate_half(dy) sin: each pair rotated by minus its angle.

    The forward is y = R x with R orthogonal (a rotation per pair), so
    dx = R^T dy = R^{-1} dy. Derivation: docs/ops/positional.md.
    """
    cos, sin = ctx
    return dy * cos - _rotate_half(dy) * sin


def _sinusoidal_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 5, 7)),), {"offset": 3})


def _rope_example(rng: Any) -> Case:
    return Case((rng.normal(size=(2, 2, 5, 6)),), {"offset": 3})


def _position_cases(t: Any, even: bool) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=2))
        dim = 2 * draw(t.sides(1, 3)) if even else draw(t.sides(1, 6))
        x = draw(t.float_arrays(lead + (draw(t.sides(1, 5)), dim)))
        kwargs = {"offset": draw(t.st.integers(0, 50)), "base": draw(t.st.sampled_from([10000.0, 100.0, 1.0]))}
        return Case((x,), kwargs)

    return cases()


register_op(
    "sinusoidal",
    sinusoidal_forward,
    sinusoidal_backward,
    example=_sinusoidal_example,
    cases=lambda t: _position_cases(t, even=False),
)
register_op("rope", rope_forward, rope_backward, example=_rope_example, cases=lambda t: _position_cases(t, even=True))
