"""How many threads NumPy's BLAS runs, read and set without ``threadpoolctl`` when it is not installed.

The pool (:func:`nptransformer.set_num_threads`) must hold BLAS to one thread
while it runs: its workers split the products themselves, and a second BLAS
thread spinning after each product takes the core a worker needs. With
``threadpoolctl`` installed, it is used. Without it (the NumPy-only install)
this module finds the BLAS libraries loaded in the process and calls their
own thread-count functions through :mod:`ctypes`:

- OpenBLAS, as NumPy's and SciPy's wheels ship it (``scipy_openblas``, with
  64-bit integers or not) or as a system library: ``openblas_get_num_threads``
  / ``openblas_set_num_threads`` under the wheels' prefix and suffix;
- Intel MKL (``mkl_rt``): ``MKL_Get_Max_Threads`` / ``MKL_Set_Num_Threads``.

The loaded libraries are read from ``/proc/self/maps`` on Linux; elsewhere,
the libraries NumPy ships next to its package (``numpy.libs``, ``.dylibs``,
``.libs``) are looked at. A BLAS found neither way (Apple's Accelerate, BLIS)
cannot be held, and :func:`limit` returns None.

>>> restore = limit(1)
>>> restore is None or all(lib.threads() == 1 for lib in libraries())
True
>>> if restore is not None: restore()
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable

#: Where OpenBLAS's thread functions sit: no prefix (a system OpenBLAS) or the wheels' ``scipy_``, and no suffix,
#: ``64_`` or ``_64_`` (the builds with 64-bit integers).
_OPENBLAS_AFFIXES = [(prefix, suffix) for prefix in ("scipy_", "") for suffix in ("64_", "_64_", "")]


@dataclass
class BlasLibrary:
    """One loaded BLAS: its file, its kind (``"openblas"`` or ``"mkl"``), and its own functions."""

    path: str
    kind: str
    _get: Any
    _set: Any
    _version: Callable[[], str] = lambda: ""
    _kernel: Callable[[], str] = lambda: ""

    def threads(self) -> int:
        """The number of threads the library runs a product on."""
        return int(self._get())

    def set_threads(self, n: int) -> None:
        """Run products on ``n`` threads from now on (process-wide)."""
        self._set(int(n))

    def describe(self) -> str:
        """The kind, version and kernel, e.g. ``"openblas 0.3.31.188.0 SkylakeX"`` (OpenBLAS reports the last
        two itself; MKL: the kind alone)."""
        return " ".join(w for w in (self.kind, self._version(), self._kernel()) if w)


def _text(fn: Any) -> Callable[[], str]:
    """A C function returning a string, as a Python function returning str ("" when absent)."""
    if fn is None:
        return lambda: ""
    fn.restype = ctypes.c_char_p
    return lambda: (fn() or b"").decode(errors="replace")


def _openblas(path: str, lib: Any) -> BlasLibrary | None:
    for prefix, suffix in _OPENBLAS_AFFIXES:
        get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
        put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
        if get is not None and put is not None:
            get.restype, put.argtypes, put.restype = ctypes.c_int, [ctypes.c_int], None
            config = _text(getattr(lib, f"{prefix}openblas_get_config{suffix}", None))
            corename = _text(getattr(lib, f"{prefix}openblas_get_corename{suffix}", None))
            # The build string starts "OpenBLAS 0.3.31.188.0 ...": the version is its second word.
            return BlasLibrary(path, "openblas", get, put, lambda: (config().split() + ["", ""])[1], corename)
    return None


def _mkl(path: str, lib: Any) -> BlasLibrary | None:
    get, put = getattr(lib, "MKL_Get_Max_Threads", None), getattr(lib, "MKL_Set_Num_Threads", None)
    if get is None or put is None:
        return None
    get.restype, put.argtypes, put.restype = ctypes.c_int, [ctypes.c_int], None
    return BlasLibrary(path, "mkl", get, put)


def _loaded_paths() -> list[str]:
    """Files of the BLAS libraries this process has loaded (Linux), or that NumPy ships (elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:
        spec = importlib.util.find_spec("numpy")
        root = os.path.dirname(spec.origin) if spec and spec.origin else ""
        paths = {p for d in (root + ".libs", os.path.join(root, ".dylibs"), os.path.join(root, ".libs"))
                 for p in glob.glob(os.path.join(d, "*"))}
    names = ("openblas", "mkl_rt")
    return sorted(p for p in paths if any(n in os.path.basename(p).lower() for n in names))


def libraries() -> list[BlasLibrary]:
    """The BLAS libraries found (module docstring), each once."""
    found = []
    for path in _loaded_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        blas = _openblas(path, lib) or _mkl(path, lib)
        if blas is not None:
            found.append(blas)
    return found


def _threadpoolctl() -> Any:
    """The threadpoolctl module, or None when it cannot be imported."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def limit(n: int) -> Callable[[], None] | None:
    """Hold every BLAS in the process to ``n`` threads; returns a function that restores the counts they had,
    or None when no BLAS's count can be set (no threadpoolctl, and none found here)."""
    threadpoolctl = _threadpoolctl()
    if threadpoolctl is not None:
        return threadpoolctl.threadpool_limits(limits=n, user_api="blas").restore_original_limits
    found = libraries()
    if not found:
        return None
    before = [(lib, lib.threads()) for lib in found]
    for lib in found:
        lib.set_threads(n)

    def restore() -> None:
        for lib, threads in before:
            lib.set_threads(threads)

    return restore


def can_limit() -> bool:
    """Whether :func:`limit` can hold BLAS's threads in this process."""
    return _threadpoolctl() is not None or bool(libraries())
