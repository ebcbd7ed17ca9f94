"""GPT-2's byte-level BPE tokenizer in pure Python, id-for-id with Hugging Face ``tokenizers``.

Text becomes ids in three steps (docs/tokenizers.md walks through them):

1. Added tokens (``<|endoftext|>`` ...) written in the text are cut out whole.
2. Pre-tokenization splits the rest with GPT-2's pattern
   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``.
   Python's ``re`` has no ``\\p{L}``, so :func:`pretokenize` scans the text
   once with :mod:`unicodedata` categories and Unicode's White_Space set:
   exact, and linear in the text's length.
3. Each piece's UTF-8 bytes are mapped to printable characters (the
   byte-to-unicode table: 188 printable bytes stand for themselves, the
   other 68 are shifted past U+0100), then adjacent symbols are merged,
   lowest merge rank first and leftmost first on ties, until no ranked pair
   is left. The merge keeps a heap of candidate pairs and a linked list of
   symbols, so a word of n bytes costs O(n log n), not the O(n^2) of
   rescanning the word after every merge; repeated words come from a cache.

Decoding maps the characters back to bytes and decodes UTF-8, so any text
round-trips: ``decode(encode(s)) == s``.

>>> tok = ByteLevelBPETokenizer({"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4}, [("a", "b"), ("Ġ", "ab")])
>>> tok.encode("ab ab")
[3, 4]
>>> tok.decode([3, 4])
'ab ab'
"""

from __future__ import annotations

import heapq
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._files import read_json, read_text
from .hub import resolve

_CONTRACTIONS = ("re", "ve", "ll", "s", "t", "m", "d")  # two-letter ones first: "'re" must not stop at "'r"
# Unicode's White_Space property (what \s means in the Oniguruma regex tokenizers uses); str.isspace differs
# on U+001C..U+001F.
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))
CACHE_SIZE = 10_000
"""Distinct words whose ids are remembered (the cache stops growing when full, as ``tokenizers``' does)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte 0..255 to a printable character (``tokenizers``' ``ByteLevel.alphabet()``).

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")], len(set(table.values()))
    ('a', 'Ġ', 'Ċ', 256)
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _kind(ch: str) -> str:
    """'s' whitespace, 'L' letter, 'N' number, 'o' anything else."""
    if ch in _WHITESPACE:
        return "s"
    category = unicodedata.category(ch)[0]
    return category if category in "LN" else "o"


def pretokenize(text: str) -> list[str]:
    """Split ``text`` as GPT-2's regex does (see the module docstring); the pieces concatenate to ``text``.

    >>> pretokenize("Hello world's  end!!\\n\\n")
    ['Hello', ' world', "'s", ' ', ' end', '!!', '\\n\\n']
    """
    kinds = [_kind(ch) for ch in text]
    pieces, i, n = [], 0, len(text)
    while i < n:
        j = _piece_end(text, kinds, i, n)
        pieces.append(text[i:j])
        i = j
    return pieces


def _run_end(kinds: list[str], start: int, n: int, kind: str) -> int:
    while start < n and kinds[start] == kind:
        start += 1
    return start


def _piece_end(text: str, kinds: list[str], i: int, n: int) -> int:
    """End of the match starting at i, trying the pattern's alternatives in order."""
    if text[i] == "'":
        for c in _CONTRACTIONS:
            if text.startswith(c, i + 1):
                return i + 1 + len(c)
    start = i + 1 if text[i] == " " and i + 1 < n and kinds[i + 1] != "s" else i  # the optional leading space
    kind = kinds[start]
    if kind in "LN":
        return _run_end(kinds, start + 1, n, kind)
    if kind == "o":
        j = start + 1
        while j < n and kinds[j] == "o":
            j += 1
        return j
    end = _run_end(kinds, i, n, "s")  # whitespace: \s+(?!\S) leaves the run's last one for the next word
    return end if end == n or end - 1 == i else end - 1


class ByteLevelBPETokenizer:
    """Byte-level BPE (GPT-2, RoBERTa, GPT-J ...): text -> ids -> text.

    ``vocab``: token string -> id; ``merges``: pairs (left, right) in rank
    order (earlier merges win). ``added_tokens``: strings matched whole in
    the text before pre-tokenization (e.g. ``"<|endoftext|>"``), which must
    be in ``vocab``; ``special_tokens`` (a subset) are dropped by
    ``decode(..., skip_special_tokens=True)``. ``add_prefix_space``: put a
    space before text that does not start with one (RoBERTa's option).
    ``ignore_merges``: a word that is itself in the vocabulary is taken
    whole (``tokenizers``' BPE option of the same name). ``model_max_length``:
    the longest id sequence the model takes (truncation's default).
    """

    def __init__(self, vocab: Mapping[str, int], merges: Iterable[Sequence[str]],
                 added_tokens: Iterable[str] = (), special_tokens: Iterable[str] = (),
                 add_prefix_space: bool = False, ignore_merges: bool = False,
                 model_max_length: int | None = None, pad_token: str | None = None):
        if not isinstance(vocab, Mapping) or not vocab:
            raise TypeError(f"vocab must be a non-empty mapping of token -> id, got {type(vocab).__name__}")
        self.vocab = {str(k): int(v) for k, v in vocab.items()}
        self._tokens = {i: t for t, i in self.vocab.items()}
        if len(self._tokens) != len(self.vocab):
            raise ValueError("vocab maps two tokens to one id")
        self._vocab_size = max(self._tokens) + 1
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merges):
            if len(pair) != 2:
                raise ValueError(f"merges must hold pairs (left, right), got {pair!r} at rank {rank}")
            self.ranks.setdefault((pair[0], pair[1]), rank)  # a repeated merge keeps its first rank
        self.added_tokens = list(dict.fromkeys(added_tokens))
        self._added = set(self.added_tokens)
        self.special_tokens = set(special_tokens)
        for token in self.added_tokens:
            if token not in self.vocab:
                raise ValueError(f"added token {token!r} is not in the vocabulary")
        alternatives = sorted(self.added_tokens, key=len, reverse=True)  # longest first: "<a><b>" before "<a>"
        self._added_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        self.add_prefix_space, self.ignore_merges = bool(add_prefix_space), bool(ignore_merges)
        self.model_max_length = model_max_length
        self.pad_token = pad_token
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, list[int]] = {}

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike,
                   **kwargs: Any) -> ByteLevelBPETokenizer:
        """GPT-2's original pair: ``vocab.json`` (token -> id) and ``merges.txt`` (one "left right" per line,
        after an optional ``#version`` line)."""
        vocab = read_json(vocab_file, "a BPE vocabulary (token -> id)")
        lines = read_text(merges_file, "BPE merges, one pair a line").split("\n")
        merges = [_merge_pair(line, merges_file) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges, **kwargs)

    @classmethod
    def from_tokenizer_json(cls, file: str | os.PathLike, **kwargs: Any) -> ByteLevelBPETokenizer:
        """A ``tokenizers`` ``tokenizer.json`` with a BPE model and a ByteLevel pre-tokenizer (anything else
        in the pipeline that would change the ids is refused, naming it)."""
        spec = read_json(file, "a tokenizers tokenizer.json")
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{file}: model type must be 'BPE', got {model.get('type')!r}")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback"):
            if model.get(key) not in (None, "", False):  # each of these would change the ids
                raise ValueError(f"{file}: BPE option {key}={model.get(key)!r} is not supported")
        if spec.get("normalizer") is not None:
            raise ValueError(f"{file}: a normalizer ({spec['normalizer'].get('type')!r}) is not supported; "
                             "byte-level BPE reads raw bytes")
        byte_level = _byte_level_step(spec.get("pre_tokenizer"), file)
        merges = [_merge_pair(m, file) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        added = [t["content"] for t in spec.get("added_tokens", [])]
        special = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        kwargs.setdefault("add_prefix_space", byte_level.get("add_prefix_space", False))
        kwargs.setdefault("ignore_merges", model.get("ignore_merges", False))
        return cls(model["vocab"], merges, added_tokens=added, special_tokens=special, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str = "main",
                        cache_dir: str | os.PathLike | None = None) -> ByteLevelBPETokenizer:
        """A model directory, a Hugging Face cache entry or (with ``huggingface_hub``) a hub name.

        Reads ``tokenizer.json`` when present, else ``vocab.json`` + ``merges.txt``; ``tokenizer_config.json``
        gives ``model_max_length``, the pad token and ``add_prefix_space``.
        """
        path = resolve(name_or_path, revision=revision, cache_dir=cache_dir)
        config: dict[str, Any] = {}
        config_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_file):
            config = read_json(config_file, "a tokenizer's settings")
        kwargs: dict[str, Any] = {}
        max_length = config.get("model_max_length")
        if isinstance(max_length, int) and max_length < 10**9:  # HF writes 1e30 for "no limit"
            kwargs["model_max_length"] = max_length
        if isinstance(config.get("pad_token"), (str, dict)):
            pad = config["pad_token"]
            kwargs["pad_token"] = pad["content"] if isinstance(pad, dict) else pad
        if "add_prefix_space" in config:
            kwargs["add_prefix_space"] = config["add_prefix_space"]
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return cls.from_tokenizer_json(os.path.join(path, "tokenizer.json"), **kwargs)
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if not (os.path.isfile(vocab) and os.path.isfile(merges)):
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.json + merges.txt")
        added = config.get("added_tokens_decoder", {})
        kwargs["added_tokens"] = [t["content"] for t in added.values()]
        kwargs["special_tokens"] = [t["content"] for t in added.values() if t.get("special")]
        return cls.from_files(vocab, merges, **kwargs)

    # -- encoding ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (the largest id + 1)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def tokenize(self, text: str) -> list[str]:
        """text -> token strings (byte-level characters: a space shows as ``Ġ``)."""
        return [self._tokens[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """text (any str) -> token ids, as ``tokenizers``' ``Tokenizer.encode(text).ids``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        ids: list[int] = []
        parts = self._added_pattern.split(text) if self._added_pattern else [text]
        for k, part in enumerate(parts):
            if k % 2:  # the split's captured groups: added tokens
                ids.append(self.vocab[part])
                continue
            for word in pretokenize(part):
                ids.extend(self._word_ids(word))
        return ids

    def _word_ids(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
        if self.ignore_merges and symbols in self.vocab:
            ids = [self.vocab[symbols]]
        else:
            ids = [self._id(s, word) for s in self._merge(symbols)]
        if len(self._cache) < CACHE_SIZE:
            self._cache[word] = ids
        return ids

    def _id(self, symbol: str, word: str) -> int:
        i = self.vocab.get(symbol)
        if i is None:
            raise ValueError(f"the vocabulary has no token {symbol!r} (from {word!r}); a byte-level vocabulary "
                             "must hold all 256 byte characters")
        return i

    def _merge(self, symbols: str) -> list[str]:
        """Apply merges to one word's characters: the lowest-ranked adjacent pair first, leftmost on ties."""
        tokens = list(symbols)
        n = len(tokens)
        if n < 2:
            return tokens
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        nxt[-1] = -1
        heap = []
        for i in range(n - 1):
            rank = self.ranks.get((tokens[i], tokens[i + 1]))
            if rank is not None:
                heap.append((rank, i, tokens[i], tokens[i + 1]))
        heapq.heapify(heap)
        while heap:
            rank, i, left, right = heapq.heappop(heap)
            j = nxt[i]
            # an entry is stale once either symbol grew by another merge (symbols only grow, so equal text = same pair)
            if tokens[i] != left or j < 0 or tokens[j] != right:
                continue
            tokens[i], tokens[j] = left + right, ""
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            for a, b in ((prv[i], i), (i, nxt[i])):
                if a >= 0 and b >= 0:
                    r = self.ranks.get((tokens[a], tokens[b]))
                    if r is not None:
                        heapq.heappush(heap, (r, a, tokens[a], tokens[b]))
        out, i = [], 0
        while i >= 0:
            out.append(tokens[i])
            i = nxt[i]
        return out

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None, truncation: bool = False,
                 padding: bool = False, padding_side: str = "right", return_tensors: str | None = None) -> dict:
        """Batch encoding -> ``{"input_ids", "attention_mask"}``: lists, or (B, T) int64 arrays with
        ``return_tensors="np"`` (which needs ``padding=True`` for texts of different lengths).

        ``truncation`` keeps the first ``max_length`` ids (default ``model_max_length``);
        ``padding_side="left"`` pads in front, as decoder-only generation needs.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        limit = max_length if max_length is not None else self.model_max_length
        ids = [self.encode(t) for t in batch]
        if truncation:
            if limit is None:
                raise ValueError("truncation=True needs max_length (the tokenizer has no model_max_length)")
            ids = [row[:limit] for row in ids]
        masks = [[1] * len(row) for row in ids]
        if padding:
            width, pad = max(len(r) for r in ids), self.pad_token_id
            fill = [[pad] * (width - len(r)) for r in ids]
            zeros = [[0] * (width - len(r)) for r in ids]
            if padding_side == "left":
                ids, masks = [f + r for f, r in zip(fill, ids)], [z + m for z, m in zip(zeros, masks)]
            else:
                ids, masks = [r + f for f, r in zip(fill, ids)], [m + z for z, m in zip(zeros, masks)]
        out = {"input_ids": ids, "attention_mask": masks}
        if return_tensors == "np":
            if len({len(r) for r in ids}) > 1:
                raise ValueError("texts of different lengths need padding=True for return_tensors='np'")
            return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        return {k: v[0] for k, v in out.items()} if single else out

    @property
    def pad_token_id(self) -> int:
        """The pad token's id; GPT-2 has none, so padding uses id 0 (padded positions are masked anyway)."""
        return self.vocab[self.pad_token] if self.pad_token in self.vocab else 0

    # -- decoding ------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """ids -> text. Bytes that do not form valid UTF-8 (a sequence cut inside a character) become U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        """ids -> the raw bytes they stand for (streaming decoders use it to hold back a cut character)."""
        out = bytearray()
        for i in ids:
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or int(i) not in self._tokens:
                raise ValueError(f"ids must be token ids in the vocabulary, got {i!r}")
            token = self._tokens[int(i)]
            if token in self._added:
                if not (skip_special_tokens and token in self.special_tokens):
                    out += token.encode("utf-8")
                continue
            out += bytes(self.byte_decoder[c] for c in token)
        return bytes(out)


def _merge_pair(line: str, where: Any) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 2:
        raise ValueError(f"{where}: a merge must be two tokens separated by one space, got {line!r}")
    return parts[0], parts[1]


def _byte_level_step(pre: Any, file: Any) -> dict:
    """The ByteLevel step of a tokenizer.json pre-tokenizer (alone or as the only step of a Sequence)."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if len(steps) != 1 or not isinstance(steps[0], dict) or steps[0].get("type") != "ByteLevel":
        raise ValueError(f"{file}: the pre-tokenizer must be ByteLevel, got {pre!r}")
    if steps[0].get("use_regex", True) is not True:
        raise ValueError(f"{file}: ByteLevel with use_regex=false is not supported")
    return steps[0]
