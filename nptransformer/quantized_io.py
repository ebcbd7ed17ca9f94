"""The INT8 file format: every weight matrix as int8 plus one float32 scale per row.

``save_quantized(path, qmodel)`` writes a model returned by
:func:`~nptransformer.nn.quantize_dynamic` as an ``.npz``:

- ``<layer>.qweight`` (int8) and ``<layer>.weight_scale`` (float32) of every
  :class:`~nptransformer.nn.QuantizedLinear`, as the layer holds them;
- every other float array with two or more dimensions (embedding tables,
  attention's fused in-projection) as ``<key>::int8`` + ``<key>::scale``,
  quantized per row the same way (weight-only: it is dequantized on load);
- vectors (biases, norm gains) as float32, unchanged;
- ``__format__``: "nptransformer-int8" and the version.

so the file is close to a quarter of the float32 one.
``load_quantized(path, model)`` fills a float model of the same architecture
(its own weights are ignored) and returns it quantized. Writing is atomic.
"""

from __future__ import annotations

import os

import numpy as np

from ._atomic import atomic_write
from .backend import to_numpy
from .nn import Module, quantize_dynamic
from .nn.quantized import dequantize_rows, quantize_rows

FORMAT = "nptransformer-int8 1"


def save_quantized(path: str | os.PathLike, qmodel: Module) -> None:
    """Write ``qmodel`` (from ``quantize_dynamic``) in the int8 format; see the module docstring."""
    if not isinstance(qmodel, Module):
        raise TypeError(f"qmodel must be a Module, got {type(qmodel).__name__}")
    arrays: dict[str, np.ndarray] = {"__format__": np.array(FORMAT)}
    for key, value in qmodel.state_dict().items():
        if value is None:
            continue
        a = to_numpy(value)
        if a.dtype.kind == "f" and a.ndim >= 2:
            q, scale = quantize_rows(a.reshape(a.shape[0], -1).astype(np.float32))
            arrays[f"{key}::int8"], arrays[f"{key}::scale"] = q.reshape(a.shape), scale
        else:
            arrays[key] = a.astype(np.float32) if a.dtype.kind == "f" else a
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_quantized(path: str | os.PathLike, model: Module, path_kind: str = "int8") -> Module:
    """Read a file of :func:`save_quantized` into ``quantize_dynamic(model)``; returns the quantized model.

    ``model``: a float model of the saved architecture (e.g. built from the
    same config); ``path_kind``: the QuantizedLinear path, "int8" or "dequantize".
    Raises ValueError naming the file when it is not in this format or does
    not fit the model.
    """
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as z:
        if "__format__" not in z.files or str(z["__format__"]) != FORMAT:
            raise ValueError(f"{path} is not an {FORMAT!r} file (save it with save_quantized)")
        stored = {k: z[k] for k in z.files if k != "__format__"}
    qmodel = quantize_dynamic(model, path=path_kind)
    state = {}
    for key, value in qmodel.state_dict().items():
        if value is None:
            continue
        if f"{key}::int8" in stored:
            q = stored.pop(f"{key}::int8")
            state[key] = dequantize_rows(q.reshape(q.shape[0], -1), stored.pop(f"{key}::scale")).reshape(q.shape)
        elif key in stored:
            state[key] = stored.pop(key)
        else:
            raise ValueError(f"{path} has no entry for {key!r}: it was saved from another architecture")
    if stored:
        raise ValueError(f"{path} holds entries this model does not have: {sorted(stored)[:5]}")
    qmodel.load_state_dict(state)
    return qmodel
