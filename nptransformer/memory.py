"""Keeping freed memory for reuse instead of handing it back to the OS after every step.

A training step allocates its activations in the forward and frees them in
the backward: about 200 MiB a step for the bench's default GPT. glibc's
malloc maps arrays above a (self-adjusting) threshold with their own
``mmap`` and returns the top of its heap to the OS once more than twice that
threshold lies free there. Either way the next step's arrays land on fresh
pages, and every fresh page costs a page fault and the kernel zeroing it:
about 16,000 faults a step here (64 MiB), 15 to 20 % of the step's time.

:func:`retain_freed_memory` sets both thresholds (``mallopt``) so high that
arrays come from the heap and freed memory stays mapped for the next step;
the faults fall to a dozen a step. The resident set no longer shrinks after
a step, so the process holds its peak; the peak itself is unchanged
(docs/performance.md). The setting is process-wide and lasts for the
process: PyTorch's CPU allocator uses the same malloc and gains from it as
well (``bench`` applies it to both). glibc only: on other C libraries it
does nothing and says so.

>>> from nptransformer.memory import retain_freed_memory
>>> retain_freed_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit (HEAP_MAX_SIZE / 2); arrays above it are still mapped on their own.
_MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is returned to the OS only beyond this much.
_TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory mapped and to serve arrays up to 32 MiB from its heap.

    Returns True when the C library took the setting, False where it is not
    glibc (nothing changed). Process-wide and not undone.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both must be set: setting either turns off glibc's own adjustment of the other.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
