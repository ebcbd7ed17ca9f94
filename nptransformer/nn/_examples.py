"""Inputs the layers' and models' gradient-check registrations share."""

from __future__ import annotations

from typing import Any

from .. import backend


def padding_mask(B: int, S: int) -> Any:
    """(B, S) bool key-padding mask: row b pads its last b positions (row 0 none, so no row is all padding)."""
    return backend.asarray([[b > 0 and s >= S - b for s in range(S)] for b in range(B)], dtype="bool")
