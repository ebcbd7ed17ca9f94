"""The Unigram tokenizer against the ``tokenizers`` package, on tokenizers it trains itself.

Three tokenizer.json files, each trained here by ``tokenizers``' UnigramTrainer
on lines of examples/data/shakespeare.txt and then given a different pipeline:

- "t5": NFKC + collapsing spaces, Metaspace (prepend always), "$A </s>"
  template, byte fallback (the 256 ``<0xXX>`` pieces added, as SentencePiece
  models with byte_fallback have them) with a Metaspace decoder;
- "albert": lowercase + strip, WhitespaceSplit then Metaspace (prepend
  first), an added ``[MASK]`` with lstrip and a normalised single-word one;
- "llama": no pre-tokenizer, the normaliser prepends ``▁`` and replaces
  spaces, byte fallback, decoder Replace + ByteFallback + Fuse + Strip.

Ids (single texts and pairs) and decoded text must be identical on 2,308 strings:
lines, random cuts of lines, and random mixes of ASCII, accents, combining
marks, CJK, emoji, unusual whitespace and the special tokens themselves.
"""

import json
import random

import pytest

from nptransformer.tokenizer_unigram import AddedToken, UnigramTokenizer

DATA = "examples/data/shakespeare.txt"


@pytest.fixture(scope="module")
def lines():
    with open(DATA, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus(lines):
    rng = random.Random(0)
    pool = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"-\t\n  ") + list("éèüñçÅøßæœ") + [
        "e\u0301", "ﬁ", "Ｈｅｌｌｏ", "①", "²", "北京", "日本語", "🙂", "👍🏽", "\u200b", "ǅ", "İ",
        "</s>", "<pad>",
        "[MASK]", "xyz", "<0x41>", "▁", "  ", "\u3000", "\x1c", "\xa0"]
    texts = ["", " ", "  ", "\n", "</s>", "a</s>b", " [MASK] x", "xyz xyzabc", "🙂", "▁▁"]
    texts += rng.sample(lines, 800)
    for _ in range(700):
        line = rng.choice(lines)
        start = rng.randrange(len(line))
        texts.append(line[start:start + rng.randrange(1, 40)])
    texts += ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 25))) for _ in range(790)]
    assert len(texts) >= 2000
    return texts


def _train(lines, normalizer, pre_tokenizer):
    tk = pytest.importorskip("tokenizers", reason="the reference tokenizer is the tokenizers package")
    tok = tk.Tokenizer(tk.models.Unigram())
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    trainer = tk.trainers.UnigramTrainer(vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>"],
                                         unk_token="<unk>")
    tok.train_from_iterator(lines[:3000], trainer)
    return tok


def _with_byte_fallback(tok):
    """The trainer of tokenizers 0.23 has no byte_fallback option: add the 256 byte pieces to the file."""
    tk = pytest.importorskip("tokenizers")
    spec = json.loads(tok.to_str())
    spec["model"]["byte_fallback"] = True
    spec["model"]["vocab"] += [[f"<0x{b:02X}>", 0.0] for b in range(256)]
    return tk.Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module", params=["t5", "albert", "llama"])
def pair(request, lines, tmp_path_factory):
    tk = pytest.importorskip("tokenizers", reason="the reference tokenizer is the tokenizers package")
    n, pre, dec = tk.normalizers, tk.pre_tokenizers, tk.decoders
    if request.param == "t5":
        ref = _train(lines, n.Sequence([n.NFKC(), n.Replace(tk.Regex(" {2,}"), " ")]), pre.Metaspace())
        ref.post_processor = tk.processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                              special_tokens=[("</s>", 1)])
        ref.decoder = dec.Metaspace()
        ref = _with_byte_fallback(ref)
    elif request.param == "albert":
        ref = _train(lines, n.Sequence([n.Lowercase(), n.Strip()]),
                     pre.Sequence([pre.WhitespaceSplit(), pre.Metaspace(prepend_scheme="first")]))
        ref.add_tokens([tk.AddedToken("[MASK]", lstrip=True, normalized=False),
                        tk.AddedToken("xyz", normalized=True, single_word=True)])
        ref.decoder = dec.Metaspace(prepend_scheme="first")
    else:
        ref = _train(lines, n.Sequence([n.Prepend("▁"), n.Replace(" ", "▁")]), None)
        ref.decoder = dec.Sequence([dec.Replace("▁", " "), dec.ByteFallback(), dec.Fuse(), dec.Strip(" ", 1, 0)])
        ref = _with_byte_fallback(ref)
    file = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    ref.save(str(file))
    return ref, UnigramTokenizer.from_tokenizer_json(file)


def test_ids_equal_tokenizers(pair, corpus):
    ref, ours = pair
    mismatches = [(s, ref.encode(s).ids, ours.encode(s)) for s in corpus if ref.encode(s).ids != ours.encode(s)]
    assert not mismatches, mismatches[:3]


def test_pairs_and_no_special_tokens_equal_tokenizers(pair, corpus):
    ref, ours = pair
    for a, b in zip(corpus[10:300:2], corpus[11:300:2]):
        assert ours.encode(a, b) == ref.encode(a, b).ids, (a, b)
        assert ours.encode(a, add_special_tokens=False) == ref.encode(a, add_special_tokens=False).ids, a


def test_decode_equals_tokenizers(pair, corpus):
    ref, ours = pair
    for s in corpus:
        ids = ref.encode(s).ids
        assert ours.decode(ids) == ref.decode(ids), s
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), s


def test_viterbi_prefers_the_highest_total_score():
    pieces = [("<unk>", 0.0), ("▁", -1.0), ("a", -2.0), ("b", -2.0), ("ab", -3.5), ("▁a", -1.5)]
    tok = UnigramTokenizer(pieces, unk_id=0)
    assert tok.tokenize("ab") == ["▁a", "b"]  # -1.5 - 2 = -3.5 beats "▁" + "ab" = -4.5
    assert tok.tokenize("cc a") == ["▁", "<unk>", "▁a"]  # unknown characters fused into one <unk>
    assert tok.encode("cc") == [1, 0]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(TypeError, match="pieces"):
        UnigramTokenizer([])
    with pytest.raises(ValueError, match="prepend_scheme"):
        UnigramTokenizer([("a", 0.0)], prepend_scheme="sometimes")
    with pytest.raises(ValueError, match="added token"):
        UnigramTokenizer([("a", 0.0)], added_tokens=[AddedToken("<x>")])
    tok = UnigramTokenizer([("<unk>", 0.0), ("▁", -1.0)], unk_id=0)
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(3)
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([5])
    no_unk = UnigramTokenizer([("▁", -1.0)])
    with pytest.raises(ValueError, match="unk_id"):
        no_unk.encode("q")
    file = tmp_path / "tokenizer.json"
    file.write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]},
                                "normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}}))
    with pytest.raises(ValueError, match="Precompiled"):
        UnigramTokenizer.from_tokenizer_json(file)
    file.write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(ValueError, match="Unigram"):
        UnigramTokenizer.from_tokenizer_json(file)
