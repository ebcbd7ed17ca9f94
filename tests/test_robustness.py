"""Property-based robustness: malformed arguments, non-finite values and corrupted files fed to the public API.

Each must raise one of the library's documented exception types (ValueError
or TypeError for bad arguments and files) with a message that names what to
fix, never an internal NumPy error, and never return silently (docs/reliability.md).
"""

import inspect
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import nn, testing
from nptransformer.io import read_checkpoint, save_checkpoint
from nptransformer.registry import OPS
from nptransformer.safetensors import load_file, save_file

FLOAT_OPS = sorted(name for name, spec in OPS.items() if name not in ("embedding",))


def _arrays(case):
    """The case's arguments with NumPy scalars as 0-d arrays (a strategy may draw a 0-d input as a scalar)."""
    return [np.array(a) if isinstance(a, (np.ndarray, np.generic)) else a for a in case.args]


def _float_positions(args):
    return [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]


def _corrupt(a, how):
    if how == "int dtype":
        return a.astype(np.int64)
    if how == "other float dtype":
        return a.astype(np.float32 if a.dtype == np.float64 else np.float64)
    if how == "a list":
        return a.tolist()
    return "not an array"


@pytest.mark.parametrize("name", FLOAT_OPS)
@given(data=st.data(), how=st.sampled_from(["int dtype", "other float dtype", "a list", "a string"]))
def test_a_malformed_array_argument_raises_a_named_error(name, data, how):
    spec = OPS[name]
    case = data.draw(spec.cases(testing), label="case")
    args = _arrays(case)
    positions = _float_positions(args)
    if not positions or (how == "other float dtype" and len(positions) < 2):
        return  # one float input: another float dtype is a valid call, not a malformed one
    i = data.draw(st.sampled_from(positions), label="position")
    args[i] = _corrupt(args[i], how)
    names = list(inspect.signature(spec.forward).parameters)
    with pytest.raises((TypeError, ValueError)) as info:
        spec.forward(*args, **case.kwargs)
    assert any(n in str(info.value) for n in names), f"{name}: the error names no argument: {info.value}"


ELEMENTWISE_OR_ROWWISE = ["linear", "matmul", "add", "relu", "gelu", "tanh", "softmax", "log_softmax", "layer_norm",
                          "rms_norm", "sinusoidal", "rope", "linear_activation"]


@pytest.mark.parametrize("name", ELEMENTWISE_OR_ROWWISE)
@given(data=st.data())
def test_nan_in_an_input_is_never_hidden_in_the_output(name, data):
    # Ops propagate NaN (IEEE arithmetic); none may turn it into a finite number (relu did: where(x > 0, x, 0)).
    spec = OPS[name]
    case = data.draw(spec.cases(testing), label="case")
    args = _arrays(case)
    positions = [i for i in _float_positions(args) if args[i].size]
    if not positions:
        return
    i = data.draw(st.sampled_from(positions), label="position")
    args[i].reshape(-1)[data.draw(st.integers(0, args[i].size - 1), label="entry")] = np.nan
    out, _ = spec.forward(*args, **case.kwargs)
    assert np.isnan(out).any(), f"{name}: a NaN in argument {i} vanished from the output"


@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3))
def test_corrupted_safetensors_files_raise_value_error_or_load(tmp_path_factory, cut, flips):
    path = tmp_path_factory.mktemp("st") / "w.safetensors"
    save_file({"a": np.arange(6.0).reshape(2, 3), "b": np.ones(4, dtype=np.float32)}, path, {"k": "v"})
    raw = bytearray(path.read_bytes())
    for pos, xor in flips:
        raw[pos % len(raw)] ^= xor
    raw = raw[:cut % (len(raw) + 1)]
    path.write_bytes(bytes(raw))
    try:
        arrays = load_file(path)
    except ValueError:
        return
    assert set(arrays) <= {"a", "b"}  # whatever loads is what the header describes


@given(cut=st.integers(0, 100_000), flip=st.integers(0, 100_000))
def test_corrupted_checkpoints_raise_value_error(tmp_path_factory, cut, flip):
    path = tmp_path_factory.mktemp("ck") / "ck.npz"
    save_checkpoint(path, nn.Linear(3, 2, dtype="float64"), step=7)
    raw = bytearray(path.read_bytes())
    original_crc = zlib.crc32(raw)
    raw[flip % len(raw)] ^= 0x5A
    raw = raw[:cut % (len(raw) + 1)]
    path.write_bytes(bytes(raw))
    try:
        meta, _ = read_checkpoint(path)
    except ValueError:
        return
    assert zlib.crc32(raw) != original_crc and meta["step"] == 7  # a flip in zip padding can leave it readable
