"""SentencePiece-style Unigram tokenizer (T5, ALBERT, XLNet, mT5 ...) in pure Python, id-for-id with ``tokenizers``.

Text becomes ids in four steps (docs/tokenizer_unigram.md):

1. Added tokens (``</s>``, ``<pad>`` ...) written in the text are cut out whole.
2. Each remaining piece is normalised (NFKC, collapsing spaces ... as the file says).
3. Metaspace pre-tokenization: spaces become ``▁`` (U+2581), a ``▁`` is put in
   front (``prepend_scheme``), and the text is split before each ``▁``.
4. Each word is segmented by the Viterbi algorithm: of all ways to cut it
   into vocabulary pieces, the one with the largest sum of piece scores (log
   probabilities). A character no piece covers costs the lowest score minus
   10 and becomes ``<unk>`` (consecutive ones fused into one), or, with
   ``byte_fallback``, the pieces ``<0xXX>`` of its UTF-8 bytes.

A template (``"$A </s>"``) then adds the special tokens.

>>> tok = UnigramTokenizer([("<unk>", 0.0), ("▁", -2.0), ("a", -3.0), ("b", -3.0), ("▁ab", -4.0)], unk_id=0)
>>> tok.tokenize("ab ba")                   # "▁ab" (-4) beats "▁" + "a" + "b" (-8)
['▁ab', '▁', 'b', 'a']
>>> tok.decode(tok.encode("ab ba"))
'ab ba'
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from ._files import read_json
from .tokenizer_bpe import _WHITESPACE

UNK_PENALTY = 10.0
"""How far below the lowest piece score an unknown character scores (``tokenizers``' K_UNK_PENALTY)."""

_PREPEND_SCHEMES = ("always", "first", "never")


class AddedToken:
    """A string cut out of the text whole, before the model sees it (``tokenizers``' AddedToken).

    ``lstrip``/``rstrip``: the match also swallows the whitespace on that side;
    ``single_word``: only matched when not inside a word; ``normalized``: matched
    in the normalised text instead of the raw one; ``special``: dropped by
    ``decode(..., skip_special_tokens=True)``. ``id``: its id when it is not
    one of the model's pieces (``tokenizers`` numbers such tokens after them).
    """

    def __init__(self, content: str, special: bool = True, normalized: bool = False, lstrip: bool = False,
                 rstrip: bool = False, single_word: bool = False, id: int | None = None):
        if not isinstance(content, str) or not content:
            raise ValueError(f"added token content must be a non-empty str, got {content!r}")
        self.content, self.special, self.normalized, self.id = content, special, normalized, id
        self.lstrip, self.rstrip, self.single_word = lstrip, rstrip, single_word


class UnigramTokenizer:
    """Unigram language-model tokenizer: text -> ids -> text.

    ``pieces``: (piece, score) per id, scores are log probabilities.
    ``unk_id``: the id of ``<unk>`` (needed when some text has a character no
    piece covers). ``byte_fallback``: such characters become ``<0xXX>`` byte
    pieces instead, when the vocabulary has them. ``normalizer``: a function
    str -> str applied to the text between added tokens. ``replacement``,
    ``prepend_scheme`` ("always", "first": only at the start of the text,
    "never") and ``split`` are the Metaspace pre-tokenizer's;
    ``whitespace_split`` first splits on whitespace (T5's files).
    ``added_tokens``: :class:`AddedToken` s or strings (special tokens).
    ``template``: what :meth:`encode` wraps the ids in, a list of "$A" and
    special token strings (T5: ``["$A", "</s>"]``), or None;
    ``pair_template`` the same for two texts ("$A", "$B"; default: both texts
    in ``template``'s place, one after the other). ``decoder``: functions
    list[str] -> list[str] applied in order to the pieces before they are
    joined (:func:`metaspace_decoder`, :func:`byte_fallback_decoder` ...; default: Metaspace's).
    """

    def __init__(self, pieces: Sequence[tuple[str, float]], unk_id: int | None = None, byte_fallback: bool = False,
                 normalizer: Callable[[str], str] | None = None, replacement: str = "\u2581",
                 prepend_scheme: str = "always", split: bool = True, whitespace_split: bool = False,
                 added_tokens: Iterable[AddedToken | str] = (), template: Sequence[str] | None = None,
                 pair_template: Sequence[str] | None = None, decoder: Sequence[Callable] | None = None,
                 fuse_unk: bool = True):
        if isinstance(pieces, (str, bytes)) or not pieces:
            raise TypeError(f"pieces must be a non-empty sequence of (piece, score), got {type(pieces).__name__}")
        self.pieces = [(str(p), float(s)) for p, s in pieces]
        self.vocab = {p: i for i, (p, _) in enumerate(self.pieces)}  # a repeated piece: the last id, as tokenizers
        if unk_id is not None and not (isinstance(unk_id, int) and 0 <= unk_id < len(self.pieces)):
            raise ValueError(f"unk_id must be None or an id in [0, {len(self.pieces)}), got {unk_id!r}")
        if prepend_scheme not in _PREPEND_SCHEMES:
            raise ValueError(f"prepend_scheme must be one of {_PREPEND_SCHEMES}, got {prepend_scheme!r}")
        if not isinstance(replacement, str) or len(replacement) != 1:
            raise ValueError(f"replacement must be one character, got {replacement!r}")
        self.unk_id, self.byte_fallback, self.fuse_unk = unk_id, bool(byte_fallback), bool(fuse_unk)
        self.normalizer = normalizer
        self.replacement, self.prepend_scheme, self.split = replacement, prepend_scheme, bool(split)
        self.whitespace_split = bool(whitespace_split)
        self.added_tokens = [t if isinstance(t, AddedToken) else AddedToken(t) for t in added_tokens]
        self._added_ids: dict[str, int] = {}
        for t in self.added_tokens:
            if t.id is None and t.content not in self.vocab:
                raise ValueError(f"added token {t.content!r} is neither in the vocabulary nor given an id")
            self._added_ids[t.content] = t.id if t.id is not None else self.vocab[t.content]
        self._tokens = {i: p for i, (p, _) in enumerate(self.pieces)}
        self._tokens.update({i: content for content, i in self._added_ids.items()})
        self.special_tokens = {t.content for t in self.added_tokens if t.special}
        self._raw_pattern = _added_pattern([t for t in self.added_tokens if not t.normalized])
        self._normalized_pattern = _added_pattern([t for t in self.added_tokens if t.normalized])
        self._added = {t.content: t for t in self.added_tokens}
        self.template = list(template) if template is not None else None
        self.pair_template = list(pair_template) if pair_template is not None else None
        for item in (self.template or []) + (self.pair_template or []):
            if item not in ("$A", "$B") and self._token_id(item) is None:
                raise ValueError(f"template token {item!r} is not in the vocabulary")
        self.decoder = list(decoder) if decoder is not None else [metaspace_decoder(replacement, prepend_scheme)]
        self.min_score = min(s for _, s in self.pieces)
        self._trie: dict = {}
        for piece, _ in self.pieces:  # a character trie: the pieces that start at a position, in one walk
            node = self._trie
            for ch in piece:
                node = node.setdefault(ch, {})
            node[""] = self.vocab[piece]
        self._cache: dict[str, list[int]] = {}

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_tokenizer_json(cls, file: str | os.PathLike) -> UnigramTokenizer:
        """A ``tokenizers`` ``tokenizer.json`` with a Unigram model.

        Understood: normalizers NFC, NFD, NFKC, NFKD, Lowercase, Strip,
        StripAccents, Replace, Prepend and Sequence of them; pre-tokenizers
        Metaspace, optionally after WhitespaceSplit, or none; the
        TemplateProcessing post-processor. Anything else that would change
        the ids (a Precompiled SentencePiece normalizer among them) is
        refused, naming it.
        """
        spec = read_json(file, "a tokenizers tokenizer.json")
        model = spec.get("model") or {}
        if model.get("type") != "Unigram":
            raise ValueError(f"{file}: model type must be 'Unigram', got {model.get('type')!r}")
        kwargs: dict[str, Any] = dict(unk_id=model.get("unk_id"), byte_fallback=model.get("byte_fallback", False))
        kwargs["normalizer"] = _normalizer(spec.get("normalizer"), file)
        kwargs.update(_pre_tokenizer(spec.get("pre_tokenizer"), file))
        kwargs["template"], kwargs["pair_template"] = _templates(spec.get("post_processor"), file)
        kwargs["decoder"] = _decoder(spec.get("decoder"), file)
        added = [AddedToken(t["content"], special=t.get("special", False), normalized=t.get("normalized", False),
                            lstrip=t.get("lstrip", False), rstrip=t.get("rstrip", False),
                            single_word=t.get("single_word", False), id=t.get("id"))
                 for t in spec.get("added_tokens", [])]
        return cls([tuple(p) for p in model["vocab"]], added_tokens=added, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str = "main",
                        cache_dir: str | os.PathLike | None = None) -> UnigramTokenizer:
        """A model directory, a Hugging Face cache entry or (with ``huggingface_hub``) a hub name, with a
        tokenizer.json."""
        from .hub import resolve  # imported when used, as the BPE tokenizer does

        path = resolve(name_or_path, revision=revision, cache_dir=cache_dir)
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path} has no tokenizer.json (a SentencePiece .model file is not read)")
        return cls.from_tokenizer_json(file)

    # -- encoding ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids: the pieces and the added tokens numbered after them."""
        return max(self._tokens) + 1

    def _token_id(self, token: str) -> int | None:
        return self._added_ids.get(token, self.vocab.get(token))

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """ids -> their piece (or added token) strings."""
        out = []
        for i in ids:
            if isinstance(i, bool) or not hasattr(i, "__index__") or int(i) not in self._tokens:
                raise ValueError(f"ids must be token ids of this tokenizer (0 .. {self.vocab_size - 1}), got {i!r}")
            out.append(self._tokens[int(i)])
        return out

    def __len__(self) -> int:
        return self.vocab_size

    def tokenize(self, text: str) -> list[str]:
        """text -> piece strings, without the template's special tokens."""
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=False))

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """text (and optionally a second text) -> ids, as ``tokenizers``' ``Tokenizer.encode(text, pair).ids``.

        ``add_special_tokens``: wrap in the template (``$A`` = text, ``$B`` = pair).
        """
        texts = {"$A": self._encode_text(text, "text")}
        if pair is not None:
            texts["$B"] = self._encode_text(pair, "pair")
        template = self.template if pair is None else self.pair_template
        if not add_special_tokens or self.template is None:
            return texts["$A"] + texts.get("$B", [])
        if template is None:  # no pair template: each text in the single one's place
            template = self.template + [("$B" if item == "$A" else item) for item in self.template]
        ids: list[int] = []
        for item in template:
            ids.extend(texts.get(item, []) if item in ("$A", "$B") else [self._token_id(item)])
        return ids

    def _encode_text(self, text: str, name: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for segment, is_added, at_start in _split_added(text, self._raw_pattern, self._added):
            if is_added:
                ids.append(self._added_ids[segment])
                continue
            normalized = self.normalizer(segment) if self.normalizer is not None else segment
            # "first" asks whether a word begins at offset 0 of the original text; a normaliser that deletes
            # the first character (Strip, StripAccents) moves the text's start past it.
            at_start = at_start and (self.normalizer is None or self.normalizer(segment[:1]) != "")
            for part, part_added, part_start in _split_added(normalized, self._normalized_pattern, self._added):
                if part_added:
                    ids.append(self._added_ids[part])
                    continue
                for word in self._pre_tokenize(part, at_start and part_start):
                    ids.extend(self._word_ids(word))
        return ids

    def _pre_tokenize(self, text: str, at_start: bool) -> list[str]:
        """Metaspace (after WhitespaceSplit when asked): words of the text, each with its ``▁``s."""
        words = _whitespace_split(text) if self.whitespace_split else ([text] if text else [])
        out = []
        for k, word in enumerate(words):
            word = word.replace(" ", self.replacement)
            # "first": only a word that starts the whole text (after WhitespaceSplit, one not after a space)
            first = at_start and k == 0 and not (self.whitespace_split and text[:1] in _WHITESPACE)
            prepend = self.prepend_scheme == "always" or (self.prepend_scheme == "first" and first)
            if prepend and not word.startswith(self.replacement):
                word = self.replacement + word
            out.extend(_split_before(word, self.replacement) if self.split else [word])
        return out

    def _word_ids(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is None:
            cached = []
            for piece, known in self._viterbi(word):
                cached.extend(self._piece_ids(piece, known))
            if len(self._cache) < 10_000:
                self._cache[word] = cached
        return list(cached)

    def _viterbi(self, word: str) -> list[tuple[str, bool]]:
        """The best segmentation of ``word``: (piece, in the vocabulary?) pairs, unknown runs fused.

        best[e] = max over pieces p ending at e of best[start(p)] + score(p).
        Starts are visited left to right and a later candidate must score
        strictly higher, so ties go to the earliest start, as in ``tokenizers``.
        """
        n = len(word)
        score: list[float | None] = [0.0] + [None] * n
        back: list[tuple[int, int]] = [(0, -1)] * (n + 1)  # (start, id); id -1 = unknown character
        unk_score = self.min_score - UNK_PENALTY
        for start in range(n):
            base = score[start]
            node, single = self._trie, False
            for end in range(start, n):
                node = node.get(word[end])
                if node is None:
                    break
                if "" in node:
                    piece_id = node[""]
                    candidate = base + self.pieces[piece_id][1]
                    if score[end + 1] is None or candidate > score[end + 1]:
                        score[end + 1], back[end + 1] = candidate, (start, piece_id)
                    single = single or end == start
            if not single:  # no piece is this one character: it may only be crossed as <unk>
                candidate = base + unk_score
                if score[start + 1] is None or candidate > score[start + 1]:
                    score[start + 1], back[start + 1] = candidate, (start, -1)
        pieces: list[tuple[str, bool]] = []
        end = n
        while end > 0:
            start, piece_id = back[end]
            unknown = piece_id == -1 or piece_id == self.unk_id
            if unknown and self.fuse_unk and pieces and not pieces[-1][1]:
                pieces[-1] = (word[start:end] + pieces[-1][0], False)  # consecutive unknowns: one piece
            else:
                pieces.append((word[start:end], not unknown))
            end = start
        return pieces[::-1]

    def _piece_ids(self, piece: str, known: bool) -> list[int]:
        if piece in self.vocab:
            return [self.vocab[piece]]
        if self.byte_fallback:
            byte_pieces = [f"<0x{b:02X}>" for b in piece.encode("utf-8")]
            if all(b in self.vocab for b in byte_pieces):
                return [self.vocab[b] for b in byte_pieces]
        if self.unk_id is None:
            raise ValueError(f"{piece!r} has no piece in the vocabulary and the tokenizer has no unk_id")
        return [self.unk_id]

    # -- decoding ------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """ids -> text, as ``tokenizers``' ``decode``: the pieces through the decoder steps, then joined.

        With the default (Metaspace) decoder, ``▁`` becomes a space, except in
        the first piece (the prepended one). ``skip_special_tokens`` drops the
        special added tokens (``</s>``, ``<pad>`` ...).
        """
        tokens = [t for t in self.convert_ids_to_tokens(ids)
                  if not (skip_special_tokens and t in self.special_tokens)]
        if not self.decoder:
            return " ".join(tokens)  # tokenizers without a decoder
        for step in self.decoder:
            tokens = step(tokens)
        return "".join(tokens)


# -- the steps ------------------------------------------------------------------------


def _added_pattern(tokens: list[AddedToken]) -> Any:
    if not tokens:
        return None
    alternatives = sorted((t.content for t in tokens), key=len, reverse=True)  # longest first
    return re.compile("|".join(map(re.escape, alternatives)))


def _split_added(text: str, pattern: Any, added: dict) -> list[tuple[str, bool, bool]]:
    """text -> (segment, is an added token, starts at the text's beginning) in order; empty segments dropped."""
    if pattern is None:
        return [(text, False, True)] if text else []
    out, pos, cut = [], 0, 0
    while True:
        m = pattern.search(text, pos)
        if m is None:
            break
        token = added[m.group()]
        start, end = m.start(), m.end()
        before, after = text[start - 1:start], text[end:end + 1]
        if token.single_word and (_is_word(before) or _is_word(after)):
            pos = start + 1
            continue
        if token.lstrip:
            while start > cut and text[start - 1] in _WHITESPACE:
                start -= 1
        if token.rstrip:
            while end < len(text) and text[end] in _WHITESPACE:
                end += 1
        if start > cut:
            out.append((text[cut:start], False, cut == 0))
        out.append((m.group(), True, start == 0))
        cut = pos = end
    if cut < len(text):
        out.append((text[cut:], False, cut == 0))
    return out


def _is_word(ch: str) -> bool:
    """A regex word character (what ``\\b`` sees in tokenizers' single_word match): letters, marks,
    decimal digits, connector punctuation, joiners. Not "²" (a digit, but not a decimal one)."""
    return bool(ch) and (ch.isalpha() or unicodedata.category(ch) in ("Mn", "Mc", "Me", "Nd", "Pc", "Nl")
                         or ch in "\u200c\u200d")


def _whitespace_split(text: str) -> list[str]:
    words, current = [], []
    for ch in text:
        if ch in _WHITESPACE:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _split_before(word: str, mark: str) -> list[str]:
    """Split before every ``mark`` (tokenizers' MergedWithNext): "▁a▁▁b" -> ["▁a", "▁", "▁b"]."""
    out, start = [], 0
    for i, ch in enumerate(word):
        if ch == mark and i > start:
            out.append(word[start:i])
            start = i
    if start < len(word):
        out.append(word[start:])
    return out


# -- decoder steps: list of piece strings -> list of strings -------------------------------


def metaspace_decoder(replacement: str = "\u2581", prepend_scheme: str = "always") -> Callable[[list], list]:
    """``▁`` -> space; in the first piece (whose ``▁`` the encoder prepended) ``▁`` is dropped unless "never"."""
    def decode(tokens: list) -> list:
        return [t.replace(replacement, "" if i == 0 and prepend_scheme != "never" else " ")
                for i, t in enumerate(tokens)]

    return decode


def byte_fallback_decoder(tokens: list) -> list:
    """Runs of ``<0xXX>`` pieces -> the UTF-8 text of their bytes (invalid UTF-8: one U+FFFD per byte)."""
    out, run = [], bytearray()
    for token in tokens + [None]:  # None flushes the last run
        byte = _byte_value(token) if token is not None else None
        if byte is not None:
            run.append(byte)
            continue
        if run:
            try:
                out.append(run.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" for _ in run)
            run = bytearray()
        if token is not None:
            out.append(token)
    return out


def fuse_decoder(tokens: list) -> list:
    """All pieces -> one string."""
    return ["".join(tokens)]


def _byte_value(token: str) -> int | None:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return int(token[3:5], 16)
        except ValueError:
            return None
    return None


def _strip_decoder(content: str, start: int, stop: int) -> Callable[[list], list]:
    """Each piece loses up to ``start`` leading and ``stop`` trailing ``content`` characters."""
    def strip_one(token: str) -> str:
        begin, end = 0, len(token)
        while begin < min(start, len(token)) and token[begin] == content:
            begin += 1
        while len(token) - end < stop and end > begin and token[end - 1] == content:
            end -= 1
        return token[begin:end]

    return lambda tokens: [strip_one(t) for t in tokens]


def _decoder(spec: Any, file: Any) -> list:
    """A tokenizer.json decoder -> the list of steps (empty: no decoder, pieces joined by spaces)."""
    if spec is None:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        return [step for s in spec.get("decoders", []) for step in _decoder(s, file)]
    if kind == "Metaspace":
        scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")
        return [metaspace_decoder(spec.get("replacement", "\u2581"), scheme)]
    if kind == "ByteFallback":
        return [byte_fallback_decoder]
    if kind == "Fuse":
        return [fuse_decoder]
    if kind == "Strip":
        return [_strip_decoder(spec["content"], spec.get("start", 0), spec.get("stop", 0))]
    if kind == "Replace" and "String" in spec.get("pattern", {}):
        old, new = spec["pattern"]["String"], spec["content"]
        return [lambda tokens: [t.replace(old, new) for t in tokens]]
    raise ValueError(f"{file}: decoder {kind!r} is not supported (supported: Sequence, Metaspace, ByteFallback, "
                     "Fuse, Strip, Replace with a string pattern)")


_NORMAL_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}


def _normalizer(spec: Any, file: Any) -> Callable[[str], str] | None:
    """A tokenizer.json normalizer -> a function str -> str (None: no normalizer)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        steps = [_normalizer(s, file) for s in spec.get("normalizers", [])]
        return lambda text: _apply(steps, text)
    if kind in _NORMAL_FORMS:
        return lambda text: unicodedata.normalize(kind, text)
    if kind == "Lowercase":
        return str.lower
    if kind == "StripAccents":
        return lambda text: "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    if kind == "Strip":
        return _strip(spec.get("strip_left", True), spec.get("strip_right", True))
    if kind == "Prepend":
        prefix = spec["prepend"]
        return lambda text: prefix + text if text else text
    if kind == "Replace":
        pattern, content = spec["pattern"], spec["content"]
        if "String" in pattern:
            return lambda text: text.replace(pattern["String"], content)
        regex = re.compile(pattern["Regex"])
        return lambda text: regex.sub(lambda m: content, text)
    raise ValueError(f"{file}: normalizer {kind!r} is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, "
                     "Lowercase, StripAccents, Strip, Prepend, Replace)")


def _strip(left: bool, right: bool) -> Callable[[str], str]:
    chars = "".join(sorted(_WHITESPACE))

    def strip(text: str) -> str:
        text = text.lstrip(chars) if left else text
        return text.rstrip(chars) if right else text

    return strip


def _apply(steps: list, text: str) -> str:
    for step in steps:
        if step is not None:
            text = step(text)
    return text


def _pre_tokenizer(spec: Any, file: Any) -> dict:
    """A tokenizer.json pre-tokenizer -> the Metaspace keyword arguments."""
    if spec is None:  # the normalizer did the spaces (Llama-style files): the text is one word
        return {"prepend_scheme": "never", "split": False}
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    whitespace = bool(steps) and steps[0].get("type") == "WhitespaceSplit"
    steps = steps[1:] if whitespace else steps
    if len(steps) != 1 or steps[0].get("type") != "Metaspace":
        raise ValueError(f"{file}: the pre-tokenizer must be Metaspace (optionally after WhitespaceSplit), got "
                         f"{spec!r}")
    meta = steps[0]
    scheme = meta.get("prepend_scheme")
    if scheme is None:  # files written before prepend_scheme existed
        scheme = "always" if meta.get("add_prefix_space", True) else "never"
    return {"replacement": meta.get("replacement", "\u2581"), "prepend_scheme": scheme,
            "split": meta.get("split", True), "whitespace_split": whitespace}


def _templates(spec: Any, file: Any) -> tuple[list[str] | None, list[str] | None]:
    """A TemplateProcessing post-processor -> its single and pair templates as ["$A", "</s>"]-style lists."""
    if spec is None:
        return None, None
    if spec.get("type") != "TemplateProcessing":
        raise ValueError(f"{file}: post-processor {spec.get('type')!r} is not supported (TemplateProcessing is)")
    special = spec.get("special_tokens", {})
    return (_template_items(spec.get("single", []), special),
            _template_items(spec.get("pair", []), special) if spec.get("pair") else None)


def _template_items(items: list, special: dict) -> list[str]:
    out = []
    for item in items:
        if "Sequence" in item:
            out.append("$" + item["Sequence"]["id"])
        else:
            token = item["SpecialToken"]["id"]
            out.extend(special.get(token, {}).get("tokens", [token]))
    return out
