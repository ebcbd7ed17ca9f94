"""Loading by name: Hugging Face cache layouts and sharded safetensors checkpoints, made in the test."""

import os
import shutil

import numpy as np
import pytest

from nptransformer import hub
from nptransformer.pretrained import load_gpt2


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    pytest.importorskip("torch", reason="the checkpoints are written by transformers (torch)")
    tr = pytest.importorskip("transformers", reason="the checkpoints are written by transformers")
    config = tr.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    model = tr.GPT2LMHeadModel(config).eval()
    single, sharded = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sharded")
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="10KB")
    return model, single, sharded


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def test_sharded_checkpoint_loads_like_the_single_file(gpt2_dirs):
    ref, single, sharded = gpt2_dirs
    assert os.path.isfile(sharded / "model.safetensors.index.json")
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 2
    ids = np.array([[1, 5, 9, 2], [3, 3, 7, 49]])
    ours = load_gpt2(sharded)(ids)
    np.testing.assert_allclose(ours, _logits(ref, ids), atol=1e-5)
    np.testing.assert_array_equal(ours, load_gpt2(single)(ids))


def test_a_shard_that_disagrees_with_the_index_is_refused(gpt2_dirs, tmp_path):
    _, _, sharded = gpt2_dirs
    shutil.copytree(sharded, tmp_path / "m")
    shards = sorted(f for f in os.listdir(tmp_path / "m") if f.endswith(".safetensors"))
    shutil.copy(tmp_path / "m" / shards[0], tmp_path / "m" / shards[1])
    with pytest.raises(ValueError, match="does not match model.safetensors.index.json"):
        load_gpt2(tmp_path / "m")


def _cache_layout(root, name, files_from, commit="0123abcd", ref="main"):
    repo = root / ("models--" + name.replace("/", "--"))
    shutil.copytree(files_from, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


def test_names_resolve_through_the_cache_layout(gpt2_dirs, tmp_path, monkeypatch):
    ref, single, _ = gpt2_dirs
    snapshot = _cache_layout(tmp_path, "tiny-org/tiny-gpt2", single)
    assert hub.resolve("tiny-org/tiny-gpt2", cache_dir=tmp_path) == str(snapshot)
    assert hub.resolve("tiny-org/tiny-gpt2", revision="0123abcd", cache_dir=tmp_path) == str(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    ids = np.array([[4, 8, 15, 16]])
    np.testing.assert_allclose(load_gpt2("tiny-org/tiny-gpt2")(ids), _logits(ref, ids), atol=1e-5)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.default_cache_dir() == str(tmp_path / "home" / "hub")


def test_an_unknown_name_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        hub.resolve("nobody/nothing", cache_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="revision 'v2'"):
        hub.resolve("nobody/nothing", revision="v2", cache_dir=tmp_path, download=False)
    with pytest.raises(TypeError, match="name_or_path"):
        hub.resolve(42)


def test_download_goes_through_huggingface_hub_only_when_installed(tmp_path, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = lambda repo, **kw: calls.append((repo, kw)) or str(tmp_path / "downloaded")
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    assert hub.resolve("org/model", revision="v1", cache_dir=tmp_path) == str(tmp_path / "downloaded")
    (repo, kwargs), = calls
    assert repo == "org/model" and kwargs["revision"] == "v1" and kwargs["cache_dir"] == str(tmp_path)
    assert "*.safetensors" in kwargs["allow_patterns"] and "tokenizer.json" in kwargs["allow_patterns"]

    def offline(repo, **kw):
        raise ConnectionError("no network")

    fake.snapshot_download = offline
    with pytest.raises(FileNotFoundError, match="could not be downloaded: no network"):
        hub.resolve("org/model", cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: the package is absent
    with pytest.raises(FileNotFoundError, match=r"pip install nptransformer\[hub\]"):
        hub.resolve("org/model", cache_dir=tmp_path)
