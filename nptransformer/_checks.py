"""Argument checks shared by ops and layers.

Every message names the argument, what was received and what was expected,
so bad input fails at the call site instead of deep inside a broadcast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import backend_of, dtype_name, get_array_module, to_numpy

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def is_array(a: Any) -> bool:
    if isinstance(a, np.ndarray):  # the common case, without backend_of's dispatch
        return True
    try:
        backend_of(a)
    except TypeError:
        return False
    return hasattr(a, "shape")


def check_array(name: str, a: Any) -> None:
    if not is_array(a):
        raise TypeError(f"{name} must be an array (numpy, cupy or array_api_strict), got {type(a).__name__}")


def check_float(name: str, a: Any) -> None:
    check_array(name, a)
    if dtype_name(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype_name(a.dtype)}")


def check_int(name: str, a: Any) -> None:
    check_array(name, a)
    if dtype_name(a.dtype) not in INT_DTYPES:
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {dtype_name(a.dtype)}")


def check_ndim(name: str, a: Any, allowed: tuple[int, ...] | range) -> None:
    if a.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed) if len(allowed) < 4 else f"{min(allowed)} to {max(allowed)}"
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(a.shape)}")


def check_same_dtype(**arrays: Any) -> None:
    """Mixed float dtypes are an error, not a silent upcast."""
    items = [(n, a) for n, a in arrays.items() if a is not None]
    for name, a in items:
        check_array(name, a)  # an optional argument given as a list must not fail on .dtype below
    first_name, first = items[0]
    for name, a in items[1:]:
        if dtype_name(a.dtype) != dtype_name(first.dtype):
            raise TypeError(
                f"{name} has dtype {dtype_name(a.dtype)} but {first_name} has {dtype_name(first.dtype)}; "
                "cast one explicitly (mixed dtypes are not promoted)"
            )


def check_last_dim(name: str, a: Any, size: int, what: str) -> None:
    if a.shape[-1] != size:
        raise ValueError(f"{name} must have last dimension {size} ({what}), got shape {tuple(a.shape)}")


def check_probability(name: str, p: float, *, allow_one: bool = False) -> None:
    is_number = isinstance(p, (int, float)) and not isinstance(p, bool)
    if not is_number or not (0.0 <= p and (p <= 1.0 if allow_one else p < 1.0)):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be a probability in {interval}, got {p!r}")


def check_int_at_least(name: str, n: Any, minimum: int, expected: str | None = None) -> None:
    """Raise ValueError unless ``n`` is an int (not a bool) >= ``minimum``; ``expected`` rewords the message."""
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{name} must be {expected or f'an integer >= {minimum}'}, got {n!r}")


def check_positive_int(name: str, n: Any) -> None:
    check_int_at_least(name, n, 1, "a positive integer")


def check_broadcastable(name_a: str, shape_a: tuple, name_b: str, shape_b: tuple) -> None:
    """NumPy broadcasting rules, checked up front so the error names both arguments."""
    for n, m in zip(reversed(tuple(shape_a)), reversed(tuple(shape_b))):
        if n != m and n != 1 and m != 1:
            raise ValueError(f"{name_a} of shape {tuple(shape_a)} and {name_b} of shape {tuple(shape_b)} "
                             "do not broadcast together")


def check_token_ids(name: str, ids: Any, size: int, what: str, ignore_index: int | None = None) -> None:
    """Raise unless ``ids`` is an integer array with every entry in [0, size) (or equal to ``ignore_index``).

    Finding the offending values needs a reduction read back on the host:
    one explicit ``to_numpy`` of two numbers (a device sync on a GPU), the
    price of an error message instead of a silent out-of-bounds read.
    """
    check_int(name, ids)
    if ids.size == 0:
        return
    xp = get_array_module(ids)
    if ignore_index is not None:
        ids = xp.where(ids == ignore_index, 0, ids)
    lo, hi = (int(v) for v in to_numpy(xp.stack([xp.min(ids), xp.max(ids)])))
    if lo < 0 or hi >= size:
        allowed = f"[0, {size})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(f"{name} must hold {what} in {allowed}, got values from {lo} to {hi}")
