"""The masks of multi-head attention: checked, shaped to broadcast to (B, H, L, S), and combined.

Convention (torch.nn.MultiheadAttention's): a boolean mask is True where a
query may NOT attend; a float mask is added to the scores (-inf forbids).
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..backend import dtype_name, get_array_module


def attention_masks(attn_mask: Any, key_padding_mask: Any, B: int, H: int, L: int, S: int, dtype: Any) -> list:
    """The given masks, checked and reshaped to broadcast to (B, H, L, S).

    ``attn_mask`` (L, S) or (B*H, L, S); ``key_padding_mask`` (B, S); each
    bool or of the query's float dtype.
    """
    masks = []
    if attn_mask is not None:
        _checks.check_array("attn_mask", attn_mask)
        xp = get_array_module(attn_mask)
        if tuple(attn_mask.shape) == (L, S):
            masks.append(attn_mask)
        elif tuple(attn_mask.shape) == (B * H, L, S):
            masks.append(xp.reshape(attn_mask, (B, H, L, S)))
        else:
            raise ValueError(f"attn_mask must have shape ({L}, {S}) or ({B * H}, {L}, {S}), got {tuple(attn_mask.shape)}")
    if key_padding_mask is not None:
        _checks.check_array("key_padding_mask", key_padding_mask)
        if tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(f"key_padding_mask must have shape ({B}, {S}), got {tuple(key_padding_mask.shape)}")
        xp = get_array_module(key_padding_mask)
        masks.append(xp.reshape(key_padding_mask, (B, 1, 1, S)))
    for name, m in zip(("attn_mask", "key_padding_mask"), masks):
        if dtype_name(m.dtype) not in ("bool", dtype_name(dtype)):
            raise TypeError(f"{name} must be bool or {dtype_name(dtype)} (the query's dtype), got {dtype_name(m.dtype)}")
    return masks


def combine(masks: list, dtype: Any) -> Any:
    """One mask from several: bool if all are bool (masked where any is), else additive float."""
    if len(masks) < 2:
        return masks[0] if masks else None
    xp = get_array_module(masks[0])
    if all(dtype_name(m.dtype) == "bool" for m in masks):
        combined = masks[0]
        for m in masks[1:]:
            combined = xp.logical_or(combined, m)
        return combined
    combined = _additive(masks[0], dtype)
    for m in masks[1:]:
        combined = combined + _additive(m, dtype)
    return combined


def causal_bottom_right(L: int, S: int, like: Any) -> Any:
    """(L, S) bool, True where key j > S - L + i: the L queries are the last L of S positions."""
    xp = get_array_module(like)
    i = xp.reshape(backend.arange(L, like=like), (L, 1)) + (S - L)
    j = xp.reshape(backend.arange(S, like=like), (1, S))
    return j > i


def _additive(mask: Any, dtype: Any) -> Any:
    """A boolean mask as an additive one (-inf where True); float masks pass through."""
    if dtype_name(mask.dtype) != "bool":
        return mask
    xp = get_array_module(mask)
    return xp.where(mask, backend.full((), -math.inf, dtype, like=mask), backend.full((), 0.0, dtype, like=mask))
