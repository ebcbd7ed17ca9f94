"""Read and write ``.safetensors`` files with NumPy alone.

The format (see docs/safetensors.md) is three parts back to back::

    8 bytes      N, the header length, unsigned little-endian
    N bytes      JSON object: {name: {"dtype": "F32", "shape": [2, 3],
                                      "data_offsets": [begin, end]}, ...,
                               "__metadata__": {str: str}}   (optional)
    the rest     the data: every tensor's bytes, C order, little-endian;
                 offsets count from the first byte after the header

The data region must be covered exactly: no tensor outside it, no two
tensors overlapping, no unused bytes. Reading checks all of that and says
what is wrong, so a truncated download fails loudly instead of loading junk.

Loading reads each tensor into memory (one ``readinto`` per tensor) rather
than memory-mapping: the returned arrays are ordinary, writable and
independent of the file, which can then be replaced or deleted (a live
memory map would pin it, and on Windows block ``os.replace``). A BERT-base
checkpoint is ~440 MB, small enough to hold.

``BF16`` tensors load as float32 (NumPy has no bfloat16): a bfloat16 is the
top half of a float32, so shifting its 16 bits left by 16 is exact.

Saving is atomic (:func:`nptransformer._atomic.atomic_write`): a crash while
writing leaves any previous file at ``path`` intact.

>>> import numpy as np, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
>>> save_file({"w": np.eye(2, dtype=np.float32)}, path, metadata={"format": "np"})
>>> load_file(path)["w"]
array([[1., 0.],
       [0., 1.]], dtype=float32)
>>> read_header(path)
({'w': {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [0, 16]}}, {'format': 'np'})
"""

from __future__ import annotations

import json
import math
import mmap as _mmap
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import backend
from ._atomic import atomic_write
from ._checks import check_array

# Format dtype code -> little-endian NumPy storage dtype. BF16 is stored as
# raw uint16 and widened to float32 on load.
_STORAGE = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# NumPy dtype name -> format code, for saving (everything but BF16).
_CODE_OF = {dt.name: code for code, dt in _STORAGE.items() if code != "BF16"}

_METADATA_KEY = "__metadata__"


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array of any backend and any shape) to ``path`` atomically.

    Arrays are copied to the host with :func:`nptransformer.backend.to_numpy`.
    Supported dtypes: float64/32/16, int64/32/16/8, uint64/32/16/8, bool.
    ``metadata`` is a flat str -> str mapping stored under ``"__metadata__"``.
    Tensors are laid out by decreasing item size, then by name, after a
    header padded to a multiple of 8 bytes, so every tensor is aligned to its
    item size (readers may then view the data in place).
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
        if name == _METADATA_KEY:
            raise ValueError(f"tensor name {_METADATA_KEY!r} is reserved for the metadata; pass metadata= instead")
        check_array(f"tensors[{name!r}]", value)
        a = backend.to_numpy(value)
        if a.dtype.name not in _CODE_OF:
            raise TypeError(
                f"tensors[{name!r}] has dtype {a.dtype.name}, which safetensors cannot store; "
                f"expected one of {', '.join(_CODE_OF)}"
            )
        arrays[name] = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)
    _check_metadata(metadata, where="metadata")

    order = sorted(arrays, key=lambda n: (-arrays[n].itemsize, n))
    header: dict[str, Any] = {} if metadata is None else {_METADATA_KEY: dict(metadata)}
    offset = 0
    for name in order:
        a = arrays[name]
        header[name] = {"dtype": _CODE_OF[a.dtype.name], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # JSON allows trailing spaces; they align the data

    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            f.write(arrays[name].reshape(-1).view(np.uint8))


#: The format's own limit on the header (the reference implementation refuses longer ones).
MAX_HEADER_BYTES = 100_000_000
#: No array of more bytes can be allocated (NumPy's sizes are signed 64-bit), even one with a zero axis.
MAX_TENSOR_BYTES = 2**62


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """The validated header of a safetensors file, without reading the data.

    Returns ``(tensors, metadata)``: ``tensors`` maps each name to
    ``{"dtype": code, "shape": [..], "data_offsets": [begin, end]}`` in file
    order; ``metadata`` is the ``"__metadata__"`` mapping ({} if absent).
    Raises ValueError naming the file and the problem if the file is not a
    well-formed safetensors file.
    """
    with open(path, "rb") as f:
        tensors, metadata, _ = _read_layout(f, os.fspath(path))
    return tensors, metadata


def load_file(path: str | os.PathLike, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file into NumPy arrays (name -> array, file order).

    Arrays come back in native byte order, with the stored dtype except BF16,
    which becomes float32. Raises ValueError for a malformed file (see
    :func:`read_header`). ``mmap=True`` maps the file instead of reading it:
    the arrays are read-only views of the file's pages (copied only where
    the byte order or BF16 needs it), so loading a model costs no second
    copy of its weights; the mapping closes when the last array is freed.
    """
    path = os.fspath(path)
    out = {}
    with open(path, "rb") as f:
        tensors, _, data_start = _read_layout(f, path)
        mapped = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) if mmap and tensors else None
        for name, info in tensors.items():
            begin, _ = info["data_offsets"]
            dtype = _STORAGE[info["dtype"]]
            if mapped is not None:
                count = math.prod(info["shape"])
                buf = np.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + begin).reshape(info["shape"])
            else:
                buf = np.empty(info["shape"], dtype=dtype)
                f.seek(data_start + begin)
                if f.readinto(buf.reshape(-1).view(np.uint8)) != buf.nbytes:
                    raise ValueError(f"{path}: file ended while reading tensor {name!r}")
            out[name] = _to_native(buf, info["dtype"])
    return out


def _to_native(buf: np.ndarray, code: str) -> np.ndarray:
    if code == "BF16":
        # bfloat16 = the high 16 bits of a float32
        return (buf.astype(np.uint32) << 16).view(np.float32)
    return buf.astype(buf.dtype.newbyteorder("="), copy=False)


def _read_layout(f: Any, path: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and validate the header; returns (tensors, metadata, offset of the data region)."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if 8 + n > size:
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit of the format")
    try:
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: header is not valid UTF-8 JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: header JSON is nested too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(_METADATA_KEY, None) or {}  # absent and null both mean no metadata
    _check_metadata(metadata, where=f"{path}: {_METADATA_KEY}", error=ValueError)
    data_size = size - 8 - n
    for name, info in header.items():
        _check_entry(path, name, info, data_size)
    _check_coverage(path, header, data_size)
    return header, metadata, 8 + n


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise json.JSONDecodeError(f"key {dup!r} appears twice", "", 0)
    return dict(pairs)


def _check_metadata(metadata: Any, where: str, error: type = TypeError) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise error(f"{where} must map str to str, got {metadata!r}")


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entry(path: str, name: str, info: Any, data_size: int) -> None:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ValueError(f"{where}: expected an object with dtype, shape and data_offsets, got {info!r}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _STORAGE:
        raise ValueError(f"{where}: unknown dtype {code!r}; supported: {', '.join(_STORAGE)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets) and offsets[0] <= offsets[1]):
        raise ValueError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    if math.prod(d for d in shape if d) * _STORAGE[code].itemsize > MAX_TENSOR_BYTES:
        raise ValueError(f"{where}: shape {shape} of {code} is larger than any array can be ({MAX_TENSOR_BYTES} bytes)")
    expected = math.prod(shape) * _STORAGE[code].itemsize
    if offsets[1] - offsets[0] != expected:
        raise ValueError(
            f"{where}: shape {shape} of {code} needs {expected} bytes but data_offsets {offsets} "
            f"span {offsets[1] - offsets[0]}"
        )
    if offsets[1] > data_size:
        raise ValueError(f"{where}: data_offsets {offsets} run past the end of the data ({data_size} bytes)")


def _check_coverage(path: str, tensors: dict[str, dict], data_size: int) -> None:
    """The tensors must tile the data region: sorted by offset, each starts where the last ended."""
    end, prev = 0, None
    for name in sorted(tensors, key=lambda k: tuple(tensors[k]["data_offsets"])):
        begin, stop = tensors[name]["data_offsets"]
        if begin < end:
            raise ValueError(f"{path}: tensor {name!r} (bytes {begin}..{stop}) overlaps tensor {prev!r} (ends at {end})")
        if begin > end:
            raise ValueError(f"{path}: bytes {end}..{begin} of the data belong to no tensor (before {name!r}); tensors must be contiguous")
        end, prev = stop, name
    if end != data_size:
        raise ValueError(f"{path}: the last {data_size - end} bytes of the data belong to no tensor")
