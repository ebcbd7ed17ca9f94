"""bfloat16, emulated: float32 arrays whose values are rounded to bfloat16 at every op's boundary.

bfloat16 is float32 with the low 16 bits of the significand dropped: the
same 8-bit exponent (so the same range: no loss scaling is needed), 8 bits
of precision instead of 24. NumPy has no bfloat16; the ``ml_dtypes``
package adds one, but as a dtype of kind ``"V"`` that NumPy's own checks do
not treat as floating point, and its matrix product returns float32 without
BLAS. So the library emulates it the way bfloat16 hardware computes anyway:
each op reads bfloat16 values, accumulates in float32, and its result is
rounded to bfloat16 (round to nearest, ties to even) before the next op
sees it. Storage stays float32, so memory is not halved; the numbers are
bfloat16's. The tests check :func:`round_to_bfloat16` against
``ml_dtypes``' conversion bit for bit.

>>> import numpy as np
>>> x = np.array([1.0, 1.00390625, 1.01171875, 3.4e38], dtype=np.float32)
>>> round_to_bfloat16(x).tolist()  # 1 + 2^-8 ties to 1 (even); 1 + 3*2^-8 ties up; past the max: inf
[1.0, 1.0, 1.015625, inf]
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .. import _checks
from ..backend import dtype_name, get_array_module
from .dispatch import rounded_results


def round_to_bfloat16(x: Any) -> Any:
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), still float32. Shapes: (...) -> (same).

    Adding ``0x7FFF`` plus the lowest kept bit to the float32's bits and
    clearing the low 16 is round-to-nearest-even on the significand; a carry
    into the exponent is correct rounding too (up to inf past bfloat16's
    largest value). NaN stays NaN (the carry could turn a NaN's payload into
    inf, so NaN entries are copied through).
    """
    _checks.check_array("x", x)
    if dtype_name(x.dtype) != "float32":
        raise TypeError(f"x must be a float32 array (bfloat16 is emulated in float32), got {dtype_name(x.dtype)}")
    xp = get_array_module(x)
    bits = x.view(xp.uint32)
    lowest_kept = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lowest_kept) & 0xFFFF0000).astype(xp.uint32).view(xp.float32)
    return xp.where(xp.isnan(x), x, rounded)


def round_results(value: Any) -> Any:
    """Every float32 array in ``value`` (an op's result, or a tuple of them) rounded to bfloat16."""
    if isinstance(value, tuple):
        return tuple(round_results(v) for v in value)
    if _checks.is_array(value) and dtype_name(value.dtype) == "float32":
        return round_to_bfloat16(value)
    return value


@contextlib.contextmanager
def emulate_bfloat16() -> Iterator[None]:
    """Inside the block, every dispatched op's float32 result and gradient is rounded to bfloat16."""
    with rounded_results(round_results):
        yield


__all__ = ["round_to_bfloat16", "round_results", "emulate_bfloat16"]
