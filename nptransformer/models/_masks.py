"""Hugging Face's ``attention_mask`` (1 = real token) as our key padding mask (True = masked)."""

from __future__ import annotations

from typing import Any

from .. import _checks
from ..backend import dtype_name, get_array_module


def key_padding_from_attention_mask(attention_mask: Any, shape: tuple, what: str) -> Any:
    """attention_mask (B, S) of 1/0 or True/False -> key padding mask (B, S), True at padding; None stays None.

    ``what`` names the expected shape in the error message.
    """
    if attention_mask is None:
        return None
    _checks.check_array("attention_mask", attention_mask)
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have shape {what} = {tuple(shape)}, got {tuple(attention_mask.shape)}")
    xp = get_array_module(attention_mask)
    if dtype_name(attention_mask.dtype) == "bool":
        return xp.logical_not(attention_mask)
    _checks.check_int("attention_mask", attention_mask)
    return attention_mask == 0
