"""Tokenizers: BERT's WordPiece (compatible with Hugging Face's ``BertTokenizer``) and a character tokenizer.

BERT turns text into ids in two stages (docs/tokenizers.md walks through them):

1. Basic tokenization splits text into words: drop control characters,
   map every whitespace character to a space, put spaces around CJK
   ideographs, NFC-normalize, split on whitespace, optionally lower-case
   and strip accents, then cut every punctuation character out as its own
   word. Special tokens such as ``[MASK]`` written in the text are kept whole.
2. WordPiece splits each word into vocabulary pieces, greedily taking the
   longest prefix found in the vocabulary; pieces after the first carry the
   ``##`` continuation mark. A word with no split, or longer than 100
   characters, becomes ``[UNK]``.

>>> tok = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!"])
>>> tok.tokenize("Unaffable!")
['un', '##aff', '##able', '!']
>>> tok.encode("Unaffable!")
[2, 5, 6, 7, 8, 3]
>>> tok.decode([2, 5, 6, 7, 8, 3], skip_special_tokens=True)
'unaffable!'
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import backend
from ._atomic import atomic_write
from ._files import read_json, read_text
from ._checks import check_positive_int, is_array

MAX_INPUT_CHARS_PER_WORD = 100
"""Longer words become ``[UNK]`` without trying WordPiece (as in BERT)."""

# CJK Unified Ideographs blocks and their extensions/compatibility blocks, as
# in the original BERT release. Hangul, Hiragana and Katakana are not here:
# those scripts separate words with spaces or get WordPiece'd like Latin.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # \t \n \r are category Cc but BERT treats them as whitespace.
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    # Every non-alphanumeric printable ASCII character counts, even those that
    # Unicode files under symbols ("$", "+", "^", "`", "|", "~"): BERT does so.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    # Below U+3400 nothing is CJK: most text never scans the ranges (a third of tokenizing's time did).
    return cp >= 0x3400 and any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _clean(text: str, tokenize_chinese_chars: bool) -> str:
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif tokenize_chinese_chars and _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return "".join(out)


def _strip_accents(word: str) -> str:
    # NFD separates a letter from its combining marks (category Mn); drop the marks.
    return "".join(ch for ch in unicodedata.normalize("NFD", word) if unicodedata.category(ch) != "Mn")


def _split_punctuation(word: str) -> list[str]:
    # Runs of non-punctuation are sliced out whole: growing a piece character by character
    # (piece += ch) copies it each time, quadratic in a long word's length.
    pieces: list[str] = []
    run = 0  # start of the current run of non-punctuation characters
    for i, ch in enumerate(word):
        if _is_punctuation(ch):
            if run < i:
                pieces.append(word[run:i])
            pieces.append(ch)
            run = i + 1
    if run < len(word):
        pieces.append(word[run:])
    return pieces


def _wordpiece(word: str, vocab: dict[str, int], unk_token: str) -> list[str]:
    if len(word) > MAX_INPUT_CHARS_PER_WORD:
        return [unk_token]
    pieces = []
    start = 0
    while start < len(word):
        # Longest match first: shrink the candidate from the right until it is in the vocabulary.
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return [unk_token]  # some position has no piece at all: the whole word is unknown
        pieces.append(piece)
        start = end
    return pieces


def _read_vocab(vocab_file: str | os.PathLike) -> list[str]:
    # \n, \r\n and \r end a line but nothing else does, so tokens such as U+2028 (a line
    # separator to str.splitlines) survive.
    text = read_text(vocab_file, "a WordPiece vocabulary, one token a line")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _token_content(value: Any) -> str:
    # tokenizer_config.json stores special tokens either as strings or as
    # serialized AddedToken objects {"content": "[UNK]", ...}.
    return value["content"] if isinstance(value, dict) else value


class BertTokenizer:
    """BERT's WordPiece tokenizer; ids equal those of Hugging Face's ``BertTokenizer`` (the slow, Python one).

    Args:
        vocab_file: text file with one token per line (a token's id is its
            line number, from 0), or the list of tokens itself.
        do_lower_case: lower-case the text (uncased models).
        strip_accents: remove accents (NFD, drop combining marks). ``None``
            follows ``do_lower_case``.
        tokenize_chinese_chars: make each CJK ideograph its own word.
        unk_token, sep_token, pad_token, cls_token, mask_token: the special
            tokens; each must be in the vocabulary. ``*_token_id`` holds their ids.
        model_max_length: the length ``truncation=True`` and
            ``padding="max_length"`` use when ``max_length`` is not given.
        clean_up_tokenization_spaces: default for :meth:`decode`.

    Ids out of range raise ValueError in :meth:`convert_ids_to_tokens` and
    :meth:`decode` (Hugging Face returns ``[UNK]`` for them); a repeated
    token in the vocabulary file raises ValueError.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | Sequence[str],
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        model_max_length: int = 512,
        clean_up_tokenization_spaces: bool = True,
    ):
        if isinstance(vocab_file, (list, tuple)):
            source, tokens = "vocabulary list", list(vocab_file)
        else:
            source, tokens = os.fspath(vocab_file), _read_vocab(vocab_file)
        self.ids_to_tokens = tokens
        self.vocab: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if token in self.vocab:
                raise ValueError(f"{source}: token {token!r} appears twice (ids {self.vocab[token]} and {i})")
            self.vocab[token] = i
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        check_positive_int("model_max_length", model_max_length)
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        specials = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token, "cls_token": cls_token, "mask_token": mask_token}
        for name, token in specials.items():
            if token not in self.vocab:
                raise ValueError(f"{name} {token!r} is not in the vocabulary ({source})")
            setattr(self, name, token)
            setattr(self, name + "_id", self.vocab[token])
        self.all_special_tokens = list(specials.values())
        self.all_special_ids = [self.vocab[t] for t in self.all_special_tokens]
        # Longest first, so that a special token containing another wins.
        alternatives = sorted(set(self.all_special_tokens), key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> BertTokenizer:
        """Load from a Hugging Face model directory: ``vocab.txt``, plus ``tokenizer_config.json`` and
        ``special_tokens_map.json`` when present (the latter's special tokens take precedence)."""
        path = os.fspath(path)
        vocab_file = os.path.join(path, "vocab.txt")
        if not os.path.isfile(vocab_file):
            raise ValueError(f"path must be a directory holding vocab.txt, got {path!r} (no {vocab_file})")
        config: dict[str, Any] = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                values = read_json(file, "a tokenizer's settings")
                if not isinstance(values, dict):
                    raise ValueError(f"{file}: expected a JSON object of settings, got {type(values).__name__}")
                config.update(values)
        if config.get("do_basic_tokenize", True) is not True:
            raise ValueError(f"{path}: do_basic_tokenize=false is not supported (only BERT's full pipeline is)")
        kwargs = {
            key: config[key]
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length", "clean_up_tokenization_spaces")
            if key in config
        }
        for key in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            if key in config:
                kwargs[key] = _token_content(config[key])
        return cls(vocab_file, **kwargs)

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.ids_to_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    # -- text -> tokens ---------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into WordPiece tokens (strings); special tokens in the text are kept whole."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tokens = []
        # re.split with a capturing group alternates: text, special, text, special, ..., text.
        for i, segment in enumerate(self._special_pattern.split(text)):
            if i % 2:
                tokens.append(segment)
                continue
            for word in self._basic_tokenize(segment):
                # A special token kept whole is in the vocabulary, so WordPiece leaves it be.
                tokens.extend(_wordpiece(word, self.vocab, self.unk_token))
        return tokens

    def _basic_tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", _clean(text, self.tokenize_chinese_chars))
        words = []
        for word in text.split():  # str.split also splits at U+2028/2029, which cleaning kept
            # Cleaning may have glued a special token together ("[MA\x00SK]"): keep it whole.
            if word in self.all_special_tokens:
                words.append(word)
                continue
            if self.do_lower_case:
                word = word.lower()
            if self.strip_accents:
                word = _strip_accents(word)
            words.extend(_split_punctuation(word))
        return words

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Id of each token (``unk_token_id`` for tokens not in the vocabulary); a single str gives an int."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Token of each id (a 1-D array of any backend is accepted); a single int gives a str."""
        if isinstance(ids, (int, np.integer)):
            return self._token_of(int(ids))
        return [self._token_of(i) for i in _as_id_list(ids, "ids")]

    def _token_of(self, i: int) -> str:
        if not 0 <= i < len(self.ids_to_tokens):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self.ids_to_tokens)} tokens")
        return self.ids_to_tokens[i]

    # -- ids with special tokens, truncation, padding ----------------------

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        truncation: bool | str = False,
        max_length: int | None = None,
    ) -> list[int]:
        """Ids of ``[CLS] text [SEP]`` (or ``[CLS] text [SEP] text_pair [SEP]``).

        ``truncation=True`` (or ``"longest_first"``) cuts the result to
        ``max_length`` (default ``model_max_length``) tokens, special tokens
        included, by dropping the last token of the longer sequence (of
        ``text_pair`` on ties) until it fits. ``max_length`` is ignored
        without truncation.
        """
        return self._encode_one(text, text_pair, add_special_tokens, truncation, max_length)[0]

    def _encode_one(
        self, text: str, text_pair: str | None, add_special_tokens: bool, truncation: bool | str, max_length: int | None
    ) -> tuple[list[int], list[int]]:
        first = self.convert_tokens_to_ids(self.tokenize(text))
        second = None if text_pair is None else self.convert_tokens_to_ids(self.tokenize(text_pair))
        if _truncation_on(truncation):
            limit = self._length(max_length)
            n_special = (2 if second is None else 3) if add_special_tokens else 0
            if limit < n_special:
                raise ValueError(f"max_length={limit} cannot hold the {n_special} special tokens")
            first, second = _truncate_longest_first(first, second, limit - n_special)
        if not add_special_tokens:
            ids = first + (second or [])
            return ids, [0] * len(first) + [1] * (len(ids) - len(first))
        ids = [self.cls_token_id, *first, self.sep_token_id]
        type_ids = [0] * len(ids)
        if second is not None:
            ids += [*second, self.sep_token_id]
            type_ids += [1] * (len(second) + 1)
        return ids, type_ids

    def _length(self, max_length: int | None) -> int:
        if max_length is None:
            return self.model_max_length
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 0:
            raise ValueError(f"max_length must be a non-negative integer or None, got {max_length!r}")
        return max_length

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encode one text or a batch into ``input_ids``, ``token_type_ids`` and ``attention_mask``.

        ``texts`` is a str or a list of str; ``text_pair`` matches it (a str
        or a list of the same length). ``padding``: False (none), True or
        ``"longest"`` (to the longest in the batch), ``"max_length"`` (to
        ``max_length``, default ``model_max_length``); pads on the right with
        ``pad_token_id``, token type 0 and attention 0. ``truncation`` and
        ``max_length`` as in :meth:`encode`. With ``return_tensors="np"``
        each value is an int64 array of shape (B, T) (B = 1 for a single
        str); otherwise a list of ints (single) or of lists (batch).
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in batch):
            raise TypeError(f"texts must be a str or a list of str, got {texts!r}")
        if text_pair is None:
            pairs: list[str | None] = [None] * len(batch)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if (single != isinstance(text_pair, str)) or len(pairs) != len(batch):
                raise ValueError(f"text_pair must match texts: a str for a str, a list of {len(batch)} str for a list; got {text_pair!r}")
        if padding not in (False, True, "do_not_pad", "longest", "max_length"):
            raise ValueError(f'padding must be False, True, "longest" or "max_length", got {padding!r}')
        if return_tensors not in (None, "np"):
            raise ValueError(f'return_tensors must be None or "np", got {return_tensors!r}')

        encoded = [self._encode_one(t, p, True, truncation, max_length) for t, p in zip(batch, pairs)]
        out: dict[str, list] = {
            "input_ids": [ids for ids, _ in encoded],
            "token_type_ids": [types for _, types in encoded],
            "attention_mask": [[1] * len(ids) for ids, _ in encoded],
        }
        if padding == "max_length":
            target = self._length(max_length)
        elif padding in (True, "longest"):
            target = max((len(ids) for ids in out["input_ids"]), default=0)
        else:
            target = 0
        fill = {"input_ids": self.pad_token_id, "token_type_ids": 0, "attention_mask": 0}
        for key, rows in out.items():
            for row in rows:
                row.extend([fill[key]] * (target - len(row)))

        if return_tensors == "np":
            lengths = {len(row) for row in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"sequences have different lengths {sorted(lengths)}; pass padding=True to stack them into an array")
            return {key: np.array(rows, dtype=np.int64).reshape(len(rows), -1) for key, rows in out.items()}
        return {key: rows[0] for key, rows in out.items()} if single else out

    # -- ids -> text --------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of a 1-D id sequence: tokens joined by spaces, ``##`` pieces glued to what precedes them.

        Lower-casing and accent stripping cannot be undone. With
        ``clean_up_tokenization_spaces`` (default: the constructor's) the
        spaces tokenization put before ``. , ! ?`` and English contractions
        (``n't 's 'm 've 're``) are removed, as Hugging Face does.
        """
        tokens = self.convert_ids_to_tokens(_as_id_list(ids, "ids"))
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.all_special_tokens]
        text = " ".join(tokens).replace(" ##", "").strip()
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for spaced, tight in _CLEAN_UPS:
                text = text.replace(spaced, tight)
        return text


_CLEAN_UPS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def _truncation_on(truncation: bool | str) -> bool:
    if truncation in (True, "longest_first"):
        return True
    if truncation in (False, "do_not_truncate"):
        return False
    raise ValueError(f'truncation must be True, False or "longest_first", got {truncation!r}')


def _truncate_longest_first(first: list[int], second: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    if second is None:
        return first[:budget], None
    n1, n2 = len(first), len(second)
    while n1 + n2 > budget:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    return first[:n1], second[:n2]


def _as_id_list(ids: Any, name: str) -> list[int]:
    if is_array(ids):
        ids = backend.to_numpy(ids)
        if ids.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {ids.shape}")
        return ids.tolist()
    ids = list(ids)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"{name} must be integers, got {ids!r}")
    return [int(i) for i in ids]


class CharTokenizer:
    """Character-level tokenizer: each distinct character of a training text is one token.

    Ids follow the sorted order of the characters, so the same text always
    gives the same vocabulary.

    >>> tok = CharTokenizer("hello world")
    >>> tok.vocab_size
    8
    >>> tok.encode("hold")
    [3, 5, 4, 1]
    >>> tok.decode([3, 5, 4, 1])
    'hold'
    """

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {text!r}")
        self.itos = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; a character outside the vocabulary raises ValueError."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            position = next(i for i, ch in enumerate(text) if ch not in self.stoi)
            raise ValueError(f"text has character {e.args[0]!r} at position {position}, which is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a 1-D id sequence (list or array of any backend)."""
        ids = _as_id_list(ids, "ids")
        bad = [i for i in ids if not 0 <= i < len(self.itos)]
        if bad:
            raise ValueError(f"ids must be in [0, {len(self.itos)}), got {bad[0]}")
        return "".join(self.itos[i] for i in ids)

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON ``{"stoi": {char: id}}``."""
        with atomic_write(path) as f:
            f.write(json.dumps({"stoi": self.stoi}, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        state = read_json(path, "a CharTokenizer vocabulary")
        stoi = state.get("stoi") if isinstance(state, dict) else None
        tok = cls("".join(stoi)) if isinstance(stoi, dict) and stoi else None
        if tok is None or tok.stoi != stoi:
            raise ValueError(f"{os.fspath(path)}: expected {{'stoi': {{char: id}}}} with ids in sorted character order, got {state!r}")
        return tok
