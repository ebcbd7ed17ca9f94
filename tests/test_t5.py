"""T5 against transformers' T5ForConditionalGeneration, and T5 decoding.

- bucket ids of every distance in [-1000, 1000], both directions, several
  bucket counts, equal to transformers' ``_relative_position_bucket``;
- small random float64 checkpoints (original T5: ReLU, tied and scaled head;
  v1.1: gated-GELU, separate head) written as safetensors and read by
  ``load_t5``: logits, loss and the gradient of every parameter against
  torch's autograd, to 1e-9 relative;
- greedy and beam decoding, cached equal to uncached; greedy equal to
  transformers' ``generate``;
- the errors of bad configs and checkpoints.

Transformers' T5LayerNorm computes its variance in float32 whatever the
dtype; the comparisons replace it by the same formula in float64 so that
both sides do exact float64 arithmetic (otherwise they would agree to ~1e-7).
"""

import json
import os

import numpy as np
import pytest

from nptransformer import T5, load_t5, no_grad
from nptransformer.functional import relative_position_bias_forward, relative_position_bucket
from nptransformer.generation import beam_search, greedy_decode
from nptransformer.nn import CrossEntropyLoss
from nptransformer.pretrained_t5 import t5_key_table

VOCAB = 23


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch", reason="the transformers comparisons need torch")
    pytest.importorskip("transformers", reason="the transformers comparisons need transformers")
    pytest.importorskip("safetensors", reason="the checkpoints are written with safetensors")
    from transformers.models.t5 import modeling_t5

    def layer_norm_float64(self, h):
        variance = h.pow(2).mean(-1, keepdim=True)  # transformers: h.to(torch.float32).pow(2).mean(...)
        return self.weight * (h * torch.rsqrt(variance + self.variance_epsilon))

    original = modeling_t5.T5LayerNorm.forward
    modeling_t5.T5LayerNorm.forward = layer_norm_float64
    yield torch, modeling_t5
    modeling_t5.T5LayerNorm.forward = original


def _checkpoint(hf, directory, feed_forward_proj, tied):
    """A random float64 T5ForConditionalGeneration saved as config.json + model.safetensors."""
    torch, modeling_t5 = hf
    from safetensors.torch import save_file
    from transformers import T5Config

    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=12, d_kv=5, d_ff=20, num_layers=2, num_decoder_layers=3, num_heads=3,
                      relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
                      feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied, decoder_start_token_id=0)
    model = modeling_t5.T5ForConditionalGeneration(config).double().eval()
    with torch.no_grad():
        if not tied:  # transformers 5 always ties; a v1.1 checkpoint has a head of its own
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 12, dtype=torch.float64))
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # norm weights away from 1, so a missed one shows
    # clones: the tied tensors share storage, which safetensors refuses
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              os.path.join(directory, "model.safetensors"))
    settings = config.to_dict()
    settings["tie_word_embeddings"] = tied
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(settings, f, default=str)
    return model


def _batch():
    rng = np.random.default_rng(1)
    src = rng.integers(2, VOCAB, size=(2, 9))
    src[1, 6:] = 0  # padding
    labels = rng.integers(2, VOCAB, size=(2, 7))
    labels[1, 5:] = -100  # ignored by the loss
    return src, (src != 0).astype(np.int64), labels


# (18, 128) and (72, 32) have distances whose bucket differs between float32 and float64 logarithms
BUCKET_CONFIGS = [(32, 128), (8, 12), (64, 256), (7, 20), (2, 3), (18, 128), (72, 32)]


def _accepted(num_buckets, max_distance, bidirectional):
    """The configurations the bucket function accepts; the others (no exact bucket, or max_distance within
    the exact ones) are refused, which a test below checks."""
    per_side = num_buckets // 2 if bidirectional else num_buckets
    return per_side >= 2 and max_distance > per_side // 2


@pytest.mark.parametrize("num_buckets,max_distance,bidirectional",
                         [(n, m, b) for n, m in BUCKET_CONFIGS for b in (True, False) if _accepted(n, m, b)])
def test_bucket_ids_equal_transformers(hf, num_buckets, max_distance, bidirectional):
    torch, modeling_t5 = hf
    d = np.arange(-1000, 1001)
    theirs = modeling_t5.T5Attention._relative_position_bucket(torch.tensor(d), bidirectional, num_buckets,
                                                               max_distance).numpy()
    np.testing.assert_array_equal(relative_position_bucket(d, bidirectional, num_buckets, max_distance), theirs)


def test_relative_bias_equals_transformers_compute_bias(hf):
    torch, modeling_t5 = hf
    from transformers import T5Config

    config = T5Config(d_model=8, d_kv=4, num_heads=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=10, is_decoder=True)
    attention = modeling_t5.T5Attention(config, has_relative_attention_bias=True, layer_idx=0).double()
    table = attention.relative_attention_bias.weight.detach().numpy()
    theirs = attention.compute_bias(3, 9, past_seen_tokens=6)[0].detach().numpy()  # (H, Tq, Tk)
    ours, _ = relative_position_bias_forward(table, 3, 9, bidirectional=False, max_distance=10, offset=6)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("feed_forward_proj,tied", [("relu", True), ("gated-gelu", False)])
def test_logits_loss_and_gradients_equal_transformers(hf, tmp_path, feed_forward_proj, tied):
    torch, _ = hf
    reference = _checkpoint(hf, tmp_path, feed_forward_proj, tied)
    model = load_t5(tmp_path, dtype="float64").train()  # dropout_rate 0: train mode changes nothing but is exercised
    assert (model.lm_head is None) == tied and model.scale_decoder_outputs == tied
    src, mask, labels = _batch()
    out = reference(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out.loss.backward()

    criterion = CrossEntropyLoss()
    logits = model(src, model.shift_right(labels), attention_mask=mask)
    loss = criterion(logits, labels)
    model.backward(criterion.backward())

    expected = out.logits.detach().numpy()
    assert np.abs(logits - expected).max() <= 1e-9 * np.abs(expected).max()
    assert abs(float(loss) - out.loss.item()) <= 1e-9 * abs(out.loss.item())
    theirs = dict(reference.named_parameters())
    table = t5_key_table(2, 3, feed_forward_proj.startswith("gated"), tied)
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(theirs)  # every parameter of theirs is one of ours
    for name, p in model.named_parameters():
        g = theirs[table[name][0][0]].grad.numpy()
        assert np.abs(p.grad - g).max() <= 1e-9 * np.abs(g).max(), name


def test_greedy_equals_transformers_generate(hf, tmp_path):
    torch, _ = hf
    reference = _checkpoint(hf, tmp_path, "relu", True)
    model = load_t5(tmp_path, dtype="float64")
    src, mask, _ = _batch()
    theirs = reference.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask), max_new_tokens=8,
                                do_sample=False, num_beams=1, eos_token_id=1, pad_token_id=0,
                                use_cache=False).numpy()  # its cache is sized for num_layers (2) < 3 decoder layers
    ours = greedy_decode(model, src, max_len=8, bos_id=0, eos_id=1)
    np.testing.assert_array_equal(ours, theirs)


def _tiny(feed_forward_proj="gated-gelu", tied=False):
    return T5(vocab_size=13, d_model=8, d_kv=3, d_ff=12, num_layers=2, num_decoder_layers=2, num_heads=2,
              relative_attention_num_buckets=6, relative_attention_max_distance=5, dropout_rate=0.1,
              feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied, max_target_positions=12,
              dtype="float64").eval()


@pytest.mark.parametrize("feed_forward_proj,tied", [("relu", True), ("gated-gelu", False)])
def test_cached_decoding_equals_uncached(feed_forward_proj, tied):
    model = _tiny(feed_forward_proj, tied)
    src = np.array([[3, 4, 5, 6, 1], [7, 8, 1, 0, 0]])
    tgt = np.array([[0, 5, 9, 2, 4, 11, 3], [0, 6, 6, 2, 10, 12, 8]])
    with no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory, src)
        cache = model.new_cache(tgt.shape[1])
        steps = [model.decode(tgt[:, :3], memory, src, cache=cache)]  # a prefix, then one token at a time
        steps += [model.decode(tgt[:, t:t + 1], memory, src, cache=cache) for t in range(3, tgt.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-12, atol=1e-12)
    greedy = [greedy_decode(model, src, max_len=10, bos_id=0, eos_id=1, use_cache=c) for c in (True, False)]
    np.testing.assert_array_equal(*greedy)
    beams = [beam_search(model, src, beam_width=3, max_len=8, bos_id=0, eos_id=1, n_best=2, use_cache=c)
             for c in (True, False)]
    for cached, uncached in zip(*beams):
        assert [h.tokens for h in cached] == [h.tokens for h in uncached]
        np.testing.assert_allclose([h.score for h in cached], [h.score for h in uncached], rtol=1e-10)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5(vocab_size=5, d_model=4, d_kv=2, d_ff=4, num_layers=1, num_heads=2, feed_forward_proj="gated-swish")
    with pytest.raises(ValueError, match="num_buckets"):
        T5(vocab_size=5, d_model=4, d_kv=2, d_ff=4, num_layers=1, num_heads=2, relative_attention_num_buckets=2)
    with pytest.raises(ValueError, match="max_distance"):
        relative_position_bucket(np.arange(3), True, 32, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        _tiny().encode(np.array([[3, 4]]), attention_mask=np.ones((1, 3)))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_t5(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type"):
        load_t5(tmp_path)


def test_unknown_tensor_is_refused(tmp_path):
    from nptransformer.safetensors import save_file

    model = _tiny("relu", True)
    config = dict(model_type="t5", vocab_size=13, d_model=8, d_kv=3, d_ff=12, num_layers=2, num_heads=2,
                  relative_attention_num_buckets=6, relative_attention_max_distance=5)
    (tmp_path / "config.json").write_text(json.dumps(config))
    table = t5_key_table(2, 2, False, True)
    tensors = {table[k][0][0]: np.asarray(v) for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded = load_t5(tmp_path, dtype="float64")
    src = np.array([[3, 4, 1]])
    np.testing.assert_array_equal(loaded(src, np.array([[0, 5]])), model(src, np.array([[0, 5]])))
    tensors["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.zeros((2, 2))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="unknown tensors.*extra"):
        load_t5(tmp_path)
