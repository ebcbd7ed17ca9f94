"""Byte-level BPE against Hugging Face ``tokenizers``: one tokenizer trained here on the project's text, ids
compared on 2,000+ strings (Shakespeare lines, random text from many scripts, whitespace and contraction
corner cases), round trips, and the GPT-2 vocab.json + merges.txt format."""

import json
import random

import numpy as np
import pytest

from nptransformer.tokenizer_bpe import ByteLevelBPETokenizer, bytes_to_unicode, pretokenize

_RANGES = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F),
           (0x0, 0x20), (0x2000, 0x206F), (0x300, 0x36F), (0x660, 0x669), (0xB2, 0xB3), (0x2160, 0x216F),
           (0x1C, 0x1F), (0x85, 0x85), (0x3000, 0x3000), (0xAC00, 0xAC50)]
_CORNERS = ["it's  you're\n\n  x<|endoftext|>y 'LL 're   ", "  \t\n a", " ", "", "'", "''s", "a  b   c\n\nd\r\n",
            "<|endoftext|><|endoftext|>", "x\u2028y\x1cz", "1,000,000 and ²³ Ⅻ", "e\u0301 nai\u0308ve"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tk = pytest.importorskip("tokenizers", reason="the reference ids come from Hugging Face tokenizers")
    text = open("examples/data/shakespeare.txt", encoding="utf-8").read()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|endoftext|>"], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[:300_000]], trainer)
    path = tmp_path_factory.mktemp("bpe")
    tok.save(str(path / "tokenizer.json"))
    return tok, path, text


def _strings(text, n_lines=1200, n_random=1000):
    rng = random.Random(0)
    lines = [line for line in text.splitlines() if line.strip()]
    randoms = ["".join(chr(rng.randint(*rng.choice(_RANGES))) for _ in range(rng.randint(0, 40)))
               for _ in range(n_random)]
    return rng.sample(lines, n_lines) + randoms + _CORNERS


def test_ids_match_tokenizers_on_2000_strings(trained):
    tok, path, text = trained
    ours = ByteLevelBPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    strings = _strings(text)
    assert len(strings) >= 2000
    mismatches = [s for s in strings if ours.encode(s) != tok.encode(s).ids]
    assert mismatches == []
    for s in strings:
        assert ours.decode(ours.encode(s)) == s == tok.decode(tok.encode(s).ids, skip_special_tokens=False)
    assert ours.decode(ours.encode("a<|endoftext|>b"), skip_special_tokens=True) == "ab"


def test_vocab_json_and_merges_txt_give_the_same_ids(trained, tmp_path):
    tok, path, text = trained
    spec = json.loads((path / "tokenizer.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 64, "added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": True}}}))
    ours = ByteLevelBPETokenizer.from_pretrained(tmp_path)
    assert ours.model_max_length == 64
    for s in _strings(text, 200, 200):
        assert ours.encode(s) == tok.encode(s).ids


def test_batch_call_pads_left_and_truncates(trained):
    _, path, _ = trained
    ours = ByteLevelBPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    batch = ours(["To be, or not to be", "Ay"], padding=True, padding_side="left", return_tensors="np")
    long, short = ours.encode("To be, or not to be"), ours.encode("Ay")
    assert batch["input_ids"][0].tolist() == long
    assert batch["input_ids"][1, -len(short):].tolist() == short
    assert batch["attention_mask"].sum(axis=1).tolist() == [len(long), len(short)]
    assert ours("To be, or not to be", truncation=True, max_length=2)["input_ids"] == long[:2]
    with pytest.raises(ValueError, match="padding=True"):
        ours(["To be", "Ay me, and more"], return_tensors="np")


def test_any_utf8_text_round_trips():
    rng = np.random.default_rng(1)
    table = bytes_to_unicode()
    tok = ByteLevelBPETokenizer({c: i for i, c in enumerate(table.values())}, [])
    for _ in range(200):
        text = "".join(chr(c) for c in rng.integers(0, 0x10FFFF, size=rng.integers(0, 30))
                       if not 0xD800 <= c <= 0xDFFF)
        assert tok.decode(tok.encode(text)) == text
        assert len(tok.encode(text)) == len(text.encode("utf-8"))  # no merges: one id per byte


def test_pretokenize_matches_the_gpt2_regex():
    regex = pytest.importorskip("regex", reason="the reference split uses the regex package's \\p{L}")
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    rng = random.Random(2)
    for _ in range(500):
        s = "".join(chr(rng.randint(*rng.choice(_RANGES[:12]))) for _ in range(rng.randint(0, 30)))
        assert pretokenize(s) == pattern.findall(s), repr(s)


def _naive_bpe(symbols, ranks):
    """GPT-2's original loop: find the lowest-ranked pair, merge all its occurrences left to right, repeat."""
    word = list(symbols)
    while len(word) > 1:
        pairs = [(ranks.get(p, float("inf")), p) for p in zip(word, word[1:])]
        rank, best = min(pairs)
        if rank == float("inf"):
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def test_long_words_merge_as_the_naive_algorithm_does(trained):
    """Words far longer than any in the corpus (thousands of bytes, no spaces) against GPT-2's original loop."""
    _, path, text = trained
    ours = ByteLevelBPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    letters = "".join(ch for ch in text[:20000] if ch.isalpha())
    rng = random.Random(3)
    for n in (1, 2, 3, 50, 2000):
        start = rng.randrange(len(letters) - n)
        word = letters[start:start + n]
        assert ours._merge(word) == _naive_bpe(word, ours.ranks)
    tok = ByteLevelBPETokenizer({"a" * 2**k: k for k in range(13)}, [("a" * 2**k, "a" * 2**k) for k in range(12)])
    assert tok.encode("a" * 4096) == [12] and tok.encode("a" * 3072) == [11, 10]


def test_bad_input_is_refused(trained, tmp_path):
    _, path, _ = trained
    ours = ByteLevelBPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    with pytest.raises(TypeError, match="text must be a str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match="ids must be token ids"):
        ours.decode([10**9])
    with pytest.raises(ValueError, match="merges must hold pairs"):
        ByteLevelBPETokenizer({"a": 0}, [("a",)])
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "NFC"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="normalizer"):
        ByteLevelBPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
