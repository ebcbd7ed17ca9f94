"""Whether layers keep what their backward needs.

>>> from nptransformer import no_grad, is_grad_enabled
>>> with no_grad():
...     is_grad_enabled()
False
"""

from __future__ import annotations

import contextlib
from typing import Iterator

_enabled = True


def is_grad_enabled() -> bool:
    """True unless inside :func:`no_grad`."""
    return _enabled


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes inside this block save no context: inference without the memory cost."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
