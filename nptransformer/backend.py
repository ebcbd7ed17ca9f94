"""Array backend: which array library the ops run on.

Three backends share one code path:

============  ==========================================================
``"numpy"``   the default; CPU.
``"cupy"``    NVIDIA GPUs through CuPy (``pip install nptransformer[cupy]``).
``"strict"``  ``array_api_strict`` on its non-default device ``device1``.
              It implements the array API standard and nothing more, and
              refuses implicit conversion to NumPy exactly as CuPy does, so
              running the tests under it proves the ops would run on a GPU.
============  ==========================================================

Ops never ask "which backend is current?": they take the namespace of their
inputs with :func:`get_array_module`. The current backend only decides where
*new* arrays go (parameters, :func:`asarray`, random numbers).

The array API standard lacks a few things a Transformer needs; they live here,
one implementation per backend, and nowhere else: :func:`erf`,
:func:`scatter_add`, the seeded :class:`Generator`, :func:`synchronize`, and
array creation on the right device (:func:`zeros`, :func:`arange`).

>>> from nptransformer import backend
>>> backend.get_backend()
'numpy'
>>> with backend.use("strict"):
...     backend.get_backend()
'strict'
"""

from __future__ import annotations

import contextlib
import importlib
import math
from typing import Any, Iterator, Sequence

import numpy as np

BACKENDS = ("numpy", "cupy", "strict")

_current = "numpy"
xp: Any = np  #: the current backend's array namespace; reassigned by set_backend


def _load_namespace(name: str) -> Any:
    if name == "numpy":
        return np
    if name == "cupy":
        try:
            cupy = importlib.import_module("cupy")
        except ImportError as e:
            raise RuntimeError(
                "backend 'cupy' needs CuPy: pip install 'nptransformer[cupy]' "
                f"(import failed: {e})"
            ) from e
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDA driver missing or broken
            raise RuntimeError(f"backend 'cupy' needs a working CUDA GPU; CUDA said: {e}") from e
        if count < 1:
            raise RuntimeError("backend 'cupy' needs a CUDA GPU, but none is visible")
        return cupy
    if name == "strict":
        try:
            return importlib.import_module("array_api_strict")
        except ImportError as e:
            raise RuntimeError(
                "backend 'strict' needs array-api-strict: pip install 'nptransformer[test]'"
            ) from e
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def set_backend(name: str) -> None:
    """Make ``name`` ("numpy", "cupy" or "strict") the current backend.

    Raises RuntimeError when the backend's library (or, for cupy, a GPU) is
    missing, and ValueError for an unknown name.
    """
    global _current, xp
    xp = _load_namespace(name)
    _current = name


def get_backend() -> str:
    """Name of the current backend."""
    return _current


@contextlib.contextmanager
def use(name: str) -> Iterator[Any]:
    """Context manager: run a block under backend ``name``, then restore the previous one.

    Yields the backend's array namespace.
    """
    previous = _current
    set_backend(name)
    try:
        yield xp
    finally:
        set_backend(previous)


def backend_of(a: Any) -> str:
    """Name of the backend an array belongs to ("numpy", "cupy" or "strict")."""
    if isinstance(a, (np.ndarray, np.generic)):
        return "numpy"
    module = type(a).__module__.split(".")[0]
    if module == "cupy":
        return "cupy"
    if module == "array_api_strict":
        return "strict"
    raise TypeError(f"expected an array of numpy, cupy or array_api_strict, got {type(a).__name__}")


def get_array_module(*arrays: Any) -> Any:
    """Array namespace of the given arrays (``None`` and Python scalars are skipped).

    With no array among them, the current backend's namespace. Arrays of two
    different backends raise TypeError.
    """
    found = None
    for a in arrays:
        if a is None or isinstance(a, (bool, int, float, complex)):
            continue
        name = backend_of(a)
        if found is not None and name != found:
            raise TypeError(f"arrays from two backends mixed: {found!r} and {name!r}")
        found = name
    if found is None:
        return xp
    return np if found == "numpy" else _load_namespace(found)


def _strict_device(ns: Any) -> Any:
    return ns.Device("device1")


def _device_kwargs(name: str) -> dict:
    if name == "strict":
        return {"device": _strict_device(_load_namespace("strict"))}
    return {}


def _creation_kwargs(like: Any) -> tuple[Any, dict]:
    if like is None:
        return xp, _device_kwargs(_current)
    ns = get_array_module(like)
    return ns, ({"device": like.device} if backend_of(like) == "strict" else {})


def asarray(a: Any, dtype: Any = None) -> Any:
    """Array ``a`` on the current backend (host data is copied to the device).

    ``dtype`` may be a NumPy dtype (``np.float32``) or a string ("float32");
    it is translated into the backend's dtype.
    """
    if isinstance(a, (list, tuple)) or np.isscalar(a):
        a = np.asarray(a)
    if _current == "strict" and isinstance(a, (np.ndarray, np.generic)):
        a = np.asarray(a, order="C")
    if _current != "numpy" and not isinstance(a, (np.ndarray, np.generic)) and backend_of(a) != _current:
        a = to_numpy(a)
    kwargs = _device_kwargs(_current)
    if dtype is not None:
        kwargs["dtype"] = dtype_of(xp, dtype)
    return xp.asarray(a, **kwargs)


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of any backend into a NumPy array (the one explicit way to reach the host)."""
    name = backend_of(a)
    if name == "numpy":
        return np.asarray(a)
    if name == "cupy":
        return a.get()
    ns = _load_namespace("strict")
    return np.asarray(ns.asarray(a, device=ns.Device("CPU_DEVICE"), copy=True))


def dtype_of(ns: Any, dtype: Any) -> Any:
    """The namespace's dtype object for a NumPy dtype, a name, or a backend dtype."""
    if ns is np:
        return np.dtype(dtype)
    if isinstance(dtype, str):
        return getattr(ns, dtype)
    try:
        return getattr(ns, np.dtype(dtype).name)
    except TypeError:
        return dtype  # already the namespace's own dtype object


# (type, dtype) -> name: np.dtype.name is computed in Python on every access. The type comes first so that
# a lookup never compares dtypes of two libraries (array_api_strict warns when asked to).
_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """Short name of a dtype of any backend: "float32", "int64", ..."""
    key = (type(dtype), dtype)
    try:
        return _DTYPE_NAMES[key]
    except (KeyError, TypeError):  # not seen yet, or not hashable
        pass
    if isinstance(dtype, np.dtype) or isinstance(dtype, type):
        name = np.dtype(dtype).name
    else:
        name = str(dtype).rsplit(".", 1)[-1]
    try:
        _DTYPE_NAMES[key] = name
    except TypeError:
        pass
    return name


def zeros(shape: tuple, dtype: Any = None, like: Any = None) -> Any:
    """Zeros on the backend and device of ``like`` (or the current backend); dtype defaults to like's."""
    ns, kwargs = _creation_kwargs(like)
    if dtype is None:
        dtype = like.dtype if like is not None else "float32"
    return ns.zeros(shape, dtype=dtype_of(ns, dtype), **kwargs)


def empty(shape: tuple, dtype: Any = None, like: Any = None) -> Any:
    """An uninitialised array on the backend and device of ``like`` (or the current backend), for a result
    every entry of which is written next; dtype defaults to like's."""
    ns, kwargs = _creation_kwargs(like)
    if dtype is None:
        dtype = like.dtype if like is not None else "float32"
    return ns.empty(shape, dtype=dtype_of(ns, dtype), **kwargs)


def full(shape: tuple, value: float, dtype: Any = None, like: Any = None) -> Any:
    """An array filled with ``value`` on the backend and device of ``like``; dtype defaults to like's."""
    ns, kwargs = _creation_kwargs(like)
    if dtype is None:
        dtype = like.dtype if like is not None else "float32"
    return ns.full(shape, value, dtype=dtype_of(ns, dtype), **kwargs)


def arange(n: int, dtype: Any = "int64", like: Any = None) -> Any:
    """``0, 1, ..., n-1`` on the backend and device of ``like`` (or the current backend)."""
    ns, kwargs = _creation_kwargs(like)
    return ns.arange(n, dtype=dtype_of(ns, dtype), **kwargs)


def synchronize() -> None:
    """Wait until queued device work is done (a no-op on CPU backends); use it around timings."""
    if _current == "cupy":
        xp.cuda.Stream.null.synchronize()


#: Longest run of one index that :func:`scatter_add` adds rank by rank on NumPy; longer runs take reduceat.
RANKED_MAX_RUN = 32


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """In place: ``target[index[i]] += values[i]`` along axis 0, repeated indices accumulating.

    Shapes: target (V, C), index (N,) integer, values (N, C). This is the
    embedding backward; fancy-index assignment would drop repeats.
    """
    name = backend_of(target)
    if name == "numpy":
        # np.add.at adds one row at a time. Sort the ids instead, so that each id's rows form a run; then
        # the r-th rows of all runs have distinct ids, and one fancy-indexed add takes them all. With runs
        # of at most RANKED_MAX_RUN rows that is a few vectorized adds: 0.50 ms for 2048 rows of 256 with
        # 512 random ids, 0.33 for 16 copies of 128 positions, where np.add.reduceat over the runs took
        # 2.5 and 1.9 (it reduces along axis 0 a few rows at a time). Longer runs keep reduceat.
        order = np.argsort(index, kind="stable")
        ids = index[order]
        if ids.size == 0:
            return
        starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        runs = np.diff(np.append(starts, ids.size))
        longest = int(runs.max())
        if longest > RANKED_MAX_RUN:
            target[ids[starts]] += np.add.reduceat(values[order], starts, axis=0)
            return
        for rank in range(longest):
            rows = starts[runs > rank] + rank  # the rank-th row of every run that long: distinct ids
            target[ids[rows]] += values[order[rows]]
    elif name == "cupy":
        importlib.import_module("cupyx").scatter_add(target, index, values)
    else:
        # The standard has no scatter: a one-hot matrix product does the same sum.
        ns = get_array_module(target)
        rows = arange(target.shape[0], dtype=index.dtype, like=target)
        onehot = ns.astype(ns.reshape(index, (-1, 1)) == ns.reshape(rows, (1, -1)), target.dtype)
        target += ns.matrix_transpose(onehot) @ values


# ---------------------------------------------------------------------------
# erf: exact GELU needs it, and neither NumPy nor the array API has it.

_SQRT_PI = math.sqrt(math.pi)


def _erf_array_api(x: Any) -> Any:
    """float64-accurate erf from array-API operations only.

    |x| <= 2.5: erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)),
    a series of positive terms (no cancellation; 80 terms reach 1e-17 at 2.5).
    |x| > 2.5:  erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))),
    the Laplace continued fraction, evaluated bottom-up with 60 levels.
    """
    ns = get_array_module(x)
    a = ns.abs(x)
    small = ns.minimum(a, 2.5)
    term = small
    total = small
    sq = small * small
    for n in range(1, 80):
        term = term * (2.0 * sq / (2 * n + 1))
        total = total + term
    series = (2.0 / _SQRT_PI) * ns.exp(-sq) * total
    big = ns.maximum(a, 2.5)
    frac = big
    for k in range(60, 0, -1):
        frac = big + (k / 2.0) / frac
    tail = 1.0 - ns.exp(-big * big) / (_SQRT_PI * frac)
    value = ns.where(a <= 2.5, series, tail)
    return ns.where(x < 0, -value, value)


#: erfcx's polynomials (examples/fit_erfcx.py prints them): s = 1 / (1 + P z) for z in [0, Z_MAX], mapped to
#: u in [-1, 1]; per dtype (P, S_MIN = 1 / (1 + P Z_MAX), the coefficients of u^0, u^1, ...), Chebyshev
#: least-squares fits: degree 12 for float64 (relative error 9.4e-11), degree 9 for float32 (1.4e-8).
_ERFCX_Z_MAX = 10.5
_ERFCX_FITS = {
    "float64": (0.35, 0.21390374331550802,
                (0.2723842572241808, 0.36713909206876666, 0.22268468958015813, 0.10079243942989677,
                 0.031885519265989724, 0.005631058586542412, -0.00018511573151348812, -0.000326706687208083,
                 -2.5731139879576097e-05, 1.933580905082689e-05, 2.5204408137648485e-06,
                 -1.1691290306217067e-06, -1.8981067471432712e-07)),
    "float32": (0.29, 0.24721878862793573,
                (0.24698450265281585, 0.3347367965371627, 0.22389849917065957, 0.12104627138130164,
                 0.05207936403748054, 0.017120053079187215, 0.003867993997817606, 0.00037979292507236967,
                 -8.440871857963683e-05, -2.8863251587840236e-05)),
}


def erfcx(z: Any, scale: float = 1.0, factor: float = 1.0) -> Any:
    """The scaled complementary error function exp(w^2) erfc(w) of w = scale * z, times ``factor``, in z's dtype.

    For 0 <= w <= 10.5: relative error below 1e-10 in float64 and below
    1.4e-8 in float32 (a quarter of its rounding; the shorter polynomial
    saves passes), plus the dtype's rounding; w above 10.5 is taken as 10.5
    (callers multiply by exp(-w^2), which is 0 in float32 past 10.5); w must
    not be negative (erfc(-w) = 2 - erfc(w)). ``scale`` and ``factor`` fold
    into the polynomial's constants: two passes over z fewer than scaling
    before and after (the float32 GELU calls it with 1/sqrt 2 and 1/2).
    erfc(w) = exp(-w^2) erfcx(w) has no cancellation,
    so it keeps its relative accuracy where erfc is tiny: float32 GELU
    (:mod:`nptransformer.kernels.activations`) and float32 erf use it.
    Shapes: z (...) -> (same).
    """
    xp = get_array_module(z)
    P, s_min, coefficients = _ERFCX_FITS["float32" if dtype_name(z.dtype) == "float32" else "float64"]
    if factor != 1.0:
        coefficients = tuple(factor * c for c in coefficients)
    u_scale = 2.0 / (1.0 - s_min)
    u = xp.minimum(z, _ERFCX_Z_MAX / scale) * (P * scale)
    u += 1.0
    u = u_scale / u  # s * u_scale, s = 1 / (1 + P w)
    u -= 1.0 + s_min * u_scale  # u = (s - S_MIN) * u_scale - 1, in [-1, 1]
    acc = u * coefficients[-1]
    for c in coefficients[-2:0:-1]:  # Horner's rule, in place
        acc += c
        acc *= u
    acc += coefficients[0]
    return acc


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_ERF_BLOCK = 1 << 16  # float32 erf works on blocks of this many entries: its float64 temporaries stay in cache


def _erf_float32(x: Any) -> Any:
    """erf of a float32 NumPy array, evaluated in float64 and rounded once (within 0.51 ulp of exact).

    |x| < 0.1: the Maclaurin series x 2/sqrt(pi) (1 - x^2/3 + x^4/10 - x^6/42), whose next term is below
    5e-11 relative; elsewhere 1 - exp(-x^2) erfcx(|x|), accurate to 1e-10 absolute.
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, _ERF_BLOCK):
        block = flat[start:start + _ERF_BLOCK]
        a = np.abs(block, dtype=np.float64)
        t = a * a
        big = np.exp(-t)
        big *= erfcx(a)
        np.subtract(1.0, big, out=big)
        series = t * (-_TWO_OVER_SQRT_PI / 42.0)
        series += _TWO_OVER_SQRT_PI / 10.0
        series *= t
        series -= _TWO_OVER_SQRT_PI / 3.0
        series *= t
        series += _TWO_OVER_SQRT_PI
        series *= a
        out[start:start + _ERF_BLOCK] = np.copysign(np.where(a < 0.1, series, big), block)
    return out.reshape(np.shape(x))


def erf(x: Any) -> Any:
    """Elementwise error function, in x's dtype.

    NumPy float32: :func:`_erf_float32`, within 0.51 ulp, as fast as
    SciPy's and the same with or without SciPy installed. Other NumPy
    dtypes: scipy.special.erf when SciPy is installed, else the array-API
    fallback above (within 12 ulp of math.erf in float64, measured). CuPy
    uses cupyx.scipy.special.erf, everything else the array-API fallback.
    """
    name = backend_of(x)
    if name == "numpy":
        if x.dtype == np.float32:
            return _erf_float32(x)
        try:
            from scipy.special import erf as scipy_erf
        except ImportError:
            return _erf_array_api(x)
        return scipy_erf(x).astype(x.dtype, copy=False)
    if name == "cupy":
        return importlib.import_module("cupyx.scipy.special").erf(x)
    return _erf_array_api(x)


# ---------------------------------------------------------------------------
# Random numbers


_DRAW_CHUNK = 1 << 16  # host draws per chunk when casting down: 512 KiB of float64 at a time


class Generator:
    """Seeded random numbers for every backend, with a state you can save and restore.

    Numbers are drawn on the host by NumPy's PCG64 and copied to the backend
    of ``like``, so one seed gives the same dropout masks on NumPy, CuPy and
    strict. ``state()`` is a plain dict (JSON-able), ``set_state`` restores it.

    >>> g = Generator(0)
    >>> s = g.state(); a = g.uniform((2,)); g.set_state(s)
    >>> bool((g.uniform((2,)) == a).all())
    True
    """

    def __init__(self, seed: int | None = None):
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def state(self) -> dict:
        """The generator's state, a JSON-able dict."""
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`state`."""
        self._rng.bit_generator.state = state

    def _to(self, host: np.ndarray, like: Any, dtype: Any) -> Any:
        if like is None:
            return asarray(host, dtype=dtype)
        ns, kwargs = _creation_kwargs(like)
        return ns.asarray(np.asarray(host, order="C"), dtype=dtype_of(ns, dtype), **kwargs)

    def _draws(self, draw: Any, shape: tuple, dtype: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``draw(size=shape)`` on the host, cast to ``dtype`` (or written into ``out``) in chunks: the same
        numbers (NumPy fills an array in order) without a float64 copy of a whole embedding table beside
        the float32 one."""
        size = math.prod(shape) if isinstance(shape, tuple) else int(shape)
        if out is None:
            if dtype_name(dtype) not in ("float16", "float32") or size <= _DRAW_CHUNK:
                return draw(size=shape)
            out = np.empty(shape, dtype=dtype_name(dtype))
        flat = out.reshape(-1)  # a view: ``out`` is C-contiguous (checked by the callers)
        for start in range(0, size, _DRAW_CHUNK):
            stop = min(start + _DRAW_CHUNK, size)
            flat[start:stop] = draw(size=stop - start)
        return out

    def _fill_or_draw(self, draw: Any, shape: tuple, dtype: Any, like: Any, out: Any) -> Any:
        if out is not None:
            if not (isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable
                    and tuple(out.shape) == tuple(shape)):
                raise ValueError(f"out must be a writeable C-contiguous NumPy array of shape {tuple(shape)}")
            return self._draws(draw, shape, out.dtype, out)
        return self._to(self._draws(draw, shape, dtype), like, dtype)

    def normal(self, shape: tuple, mean: float = 0.0, std: float = 1.0, dtype: Any = "float32", like: Any = None,
               out: np.ndarray | None = None) -> Any:
        """Normal samples of the given shape on like's backend (or the current one); ``out``: a NumPy
        array of that shape to fill in place instead (the same numbers)."""
        return self._fill_or_draw(lambda size: self._rng.normal(mean, std, size=size), shape, dtype, like, out)

    def uniform(self, shape: tuple, low: float = 0.0, high: float = 1.0, dtype: Any = "float32", like: Any = None,
                out: np.ndarray | None = None) -> Any:
        """Uniform samples in [low, high); ``out`` as in :meth:`normal`."""
        return self._fill_or_draw(lambda size: self._rng.uniform(low, high, size=size), shape, dtype, like, out)

    def uniform_streams(self, starts: Sequence[int], total: int) -> list:
        """NumPy generators for one draw of ``total`` float64 uniforms in [0, 1) cut into parts: stream i gives
        the numbers the whole draw would give from position ``starts[i]`` on, so the parts can be drawn on
        several threads and still make the same array. This generator is then where the whole draw leaves it.

        Why it works: PCG64 spends one 64-bit word on each float64 uniform and can jump ahead by any count of
        words in O(log n) (``advance``); a 32-bit value it may hold over is not used by these draws, and is kept.
        """
        state = self._rng.bit_generator.state
        streams = []
        for start in starts:
            bits = np.random.PCG64()
            bits.state = state
            bits.advance(int(start))
            streams.append(np.random.Generator(bits))
        self._rng.bit_generator.advance(int(total))
        after = self._rng.bit_generator.state
        after["has_uint32"], after["uinteger"] = state["has_uint32"], state["uinteger"]  # advance drops them
        self._rng.bit_generator.state = after
        return streams

    def bernoulli(self, shape: tuple, p: float, like: Any = None) -> Any:
        """Boolean mask, each entry True with probability ``p`` (a float64 uniform drawn for each entry)."""
        return self._to(self._rng.random(size=shape) < p, like, "bool")

    def integers(self, low: int, high: int, shape: tuple, like: Any = None) -> Any:
        """Integers in [low, high) as int64."""
        return self._to(self._rng.integers(low, high, size=shape), like, "int64")


default_generator = Generator(0)  #: used when an op is given no generator


def manual_seed(seed: int) -> None:
    """Reseed :data:`default_generator` (like ``torch.manual_seed``)."""
    default_generator.set_state(Generator(seed).state())
