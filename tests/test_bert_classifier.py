"""BertForSequenceClassification: Hugging Face checkpoints in and out, logits and gradients against
transformers (torch autograd), and the errors a bad checkpoint gives."""

import json

import numpy as np
import pytest

from nptransformer import nn
from nptransformer.models import BERT, BertForSequenceClassification
from nptransformer.pretrained_classifier import load_bert_classifier, save_bert_classifier


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the reference is transformers' BertForSequenceClassification")
    tr = pytest.importorskip("transformers", reason="the reference is transformers' BertForSequenceClassification")
    tr.logging.set_verbosity_error()
    config = tr.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=20, num_labels=3,
                           id2label={0: "tempest", 1: "hamlet", 2: "lear"}, label2id={"tempest": 0, "hamlet": 1,
                                                                                     "lear": 2})
    torch.manual_seed(0)
    model = tr.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    path = tmp_path_factory.mktemp("cls")
    model.save_pretrained(path)
    return tr, model, path


IDS = np.array([[2, 17, 33, 8, 41, 3, 0, 0], [2, 9, 14, 3, 22, 5, 49, 3]])
MASK = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
LABELS = np.array([2, 0])


def _torch_logits_and_grads(model):
    import torch

    model.zero_grad()
    out = model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK), labels=torch.tensor(LABELS))
    out.loss.backward()
    return out.logits.detach().numpy(), {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


def test_logits_and_gradients_match_transformers(hf):
    _, ref, path = hf
    ours = load_bert_classifier(path, dtype="float64")
    assert ours.id2label == {0: "tempest", 1: "hamlet", 2: "lear"}
    ref_logits, ref_grads = _torch_logits_and_grads(ref)
    logits = ours(IDS, None, MASK)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    loss = nn.CrossEntropyLoss()
    loss(logits, LABELS)
    ours.zero_grad()
    ours.backward(loss.backward())
    grads = dict(ours.named_parameters())
    np.testing.assert_allclose(grads["classifier.weight"].grad, ref_grads["classifier.weight"], atol=1e-5)
    np.testing.assert_allclose(grads["bert.pooler.dense.weight"].grad, ref_grads["bert.pooler.dense.weight"],
                               atol=1e-5)
    q = ref_grads["bert.encoder.layer.0.attention.self.query.weight"]
    np.testing.assert_allclose(grads["bert.encoder.layers.0.self_attn.in_proj_weight"].grad[:16], q, atol=1e-5)
    np.testing.assert_allclose(grads["bert.embeddings.word_embeddings.weight"].grad[1:],
                               ref_grads["bert.embeddings.word_embeddings.weight"][1:], atol=1e-5)


def test_saved_checkpoint_loads_in_transformers_and_back(hf, tmp_path):
    import torch

    tr, _, path = hf
    ours = load_bert_classifier(path)
    for p in ours.parameters():
        p.data[...] += np.float32(0.01)  # moved, as fine-tuning would
    save_bert_classifier(ours, tmp_path)
    theirs = tr.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ref = theirs(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    np.testing.assert_allclose(ours(IDS, None, MASK), ref, atol=1e-5)
    again = load_bert_classifier(tmp_path)
    np.testing.assert_array_equal(again(IDS, None, MASK), ours(IDS, None, MASK))
    assert json.loads((tmp_path / "config.json").read_text())["id2label"]["1"] == "hamlet"


def test_a_base_model_gets_a_new_classifier(hf, tmp_path):
    tr, ref, _ = hf
    ref.bert.save_pretrained(tmp_path)  # a BertModel: no classifier
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if "label" not in k}))
    with pytest.raises(ValueError, match="num_labels must be an integer"):
        load_bert_classifier(tmp_path)
    model = load_bert_classifier(tmp_path, num_labels=5)
    assert model.classifier.weight.shape == (5, 16) and not model.classifier.bias.data.any()
    assert model.id2label == {i: f"LABEL_{i}" for i in range(5)}
    with pytest.raises(ValueError, match="classifier has 3 rows"):
        load_bert_classifier(hf[2], num_labels=4)


def test_bad_arguments_are_refused():
    bert = BERT(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                add_pooling_layer=False)
    with pytest.raises(ValueError, match="no pooler"):
        BertForSequenceClassification(bert, 2)
    with pytest.raises(TypeError, match="bert must be a BERT"):
        BertForSequenceClassification("bert", 2)
    with pytest.raises(ValueError, match="num_labels"):
        BertForSequenceClassification(BERT(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=8), 0)
