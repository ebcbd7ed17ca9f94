"""Text in, text out: a causal language model and its tokenizer behind one call.

:func:`stream_text` yields the continuation of a prompt piece by piece as
the model produces it; :func:`generate_text` returns it whole and adds beam
search. Both

- stop at the model's end token (``eos_id``; GPT-2's ``<|endoftext|>``,
  left out of the text) or at the first ``stop`` string, which is cut off
  with everything after it;
- respect the model's context: ``max_new_tokens=None`` fills it, a larger
  request is reduced to the room left after the prompt, and a prompt that
  leaves no room is refused;
- never emit half a character: a token can end inside a multi-byte UTF-8
  character, so bytes are held back until the character is complete, and
  text that could be the start of a stop string is held back until it is
  clear that it is not.

:func:`load_text_model` loads a GPT-2 checkpoint directory or hub name with its tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from .generation.beam_lm import beam_search_lm
from .generation.streaming import stream_tokens


def load_text_model(name_or_path: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """A GPT-2 checkpoint (directory, cache entry or hub name) -> (model, tokenizer); the model is in eval mode."""
    from .hub import resolve
    from .pretrained import load_gpt2
    from .tokenizer_bpe import ByteLevelBPETokenizer

    path = resolve(name_or_path)
    model, tokenizer = load_gpt2(path, dtype=dtype), ByteLevelBPETokenizer.from_pretrained(path)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
    model.eos_token_id = eos if isinstance(eos, int) and 0 <= eos < model.vocab_size else None
    return model, tokenizer


def _budget(model: Any, n_prompt: int, max_new_tokens: int | None) -> int:
    room = model.max_positions - n_prompt
    if n_prompt < 1:
        raise ValueError("prompt must encode to at least one token, got an empty prompt")
    if room < 1:
        raise ValueError(f"the prompt has {n_prompt} tokens and the model's context is {model.max_positions}: "
                         "no room for a new token; shorten the prompt")
    if max_new_tokens is None:
        return room
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be None or an integer >= 1, got {max_new_tokens!r}")
    return min(max_new_tokens, room)


def _stops(stop: str | Sequence[str]) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a sequence of them, got {stop!r}")
    return stops


def _eos(model: Any, eos_id: Any) -> int | None:
    return getattr(model, "eos_token_id", None) if eos_id == "auto" else eos_id


def stream_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int | None = None,
                do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, seed: int | None = None, stop: str | Sequence[str] = (),
                eos_id: int | None | str = "auto") -> Iterator[str]:
    """Yield the continuation of ``prompt`` as text pieces, as soon as each is certain.

    Greedy by default, else sampled (``temperature``, ``top_k``, ``top_p``,
    ``seed``). ``eos_id="auto"`` takes ``model.eos_token_id`` (set by
    :func:`load_text_model`); None generates until ``max_new_tokens``.
    ``"".join(stream_text(...))`` equals :func:`generate_text` with the same arguments.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    stops, eos = _stops(stop), _eos(model, eos_id)
    ids = tokenizer.encode(prompt)
    budget = _budget(model, len(ids), max_new_tokens)
    new: list[int] = []
    emitted = 0
    for token in stream_tokens(model, ids, budget, do_sample, temperature, top_k, top_p, seed, eos_id=eos):
        if token == eos:
            break
        new.append(token)
        text = _complete_text(tokenizer.decode_bytes(new))
        cut = min((i for i in (text.find(s, emitted) for s in stops) if i >= 0), default=-1)  # held back: no stop starts earlier
        if cut >= 0:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text) - _held_back(text, stops)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    text = tokenizer.decode_bytes(new).decode("utf-8", errors="replace")  # the end: a cut character shows as U+FFFD
    if len(text) > emitted:
        yield text[emitted:]


def _complete_text(data: bytes) -> str:
    """The text of ``data`` without a trailing, still incomplete UTF-8 character (invalid bytes become U+FFFD).

    Only a lead byte among the last 3 whose sequence is not complete yet is
    held back; everything before it decodes as it will in the final text,
    so the pieces streamed so far stay a prefix of it.
    """
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0xC0:  # a lead byte: 110xxxxx, 1110xxxx or 11110xxx
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < length:
                data = data[:-back]
            break
        if byte & 0xC0 != 0x80:  # ASCII: nothing is cut
            break
    return data.decode("utf-8", errors="replace")


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def generate_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int | None = None,
                  do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int | None = None, stop: str | Sequence[str] = (),
                  eos_id: int | None | str = "auto", num_beams: int = 1, length_penalty: float = 0.6) -> str:
    """The continuation of ``prompt`` as one string: greedy, sampled, or beam search (``num_beams`` > 1).

    Beam search ranks whole hypotheses (GNMT ``length_penalty``), so it
    cannot stream; stop strings then cut the best hypothesis after the fact.
    Other arguments as :func:`stream_text`.
    """
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if num_beams == 1:
        return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                                   seed, stop, eos_id))
    if do_sample:
        raise ValueError("num_beams > 1 is deterministic beam search; it does not combine with do_sample=True")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    stops, eos = _stops(stop), _eos(model, eos_id)
    ids = tokenizer.encode(prompt)
    best = beam_search_lm(model, ids, num_beams, _budget(model, len(ids), max_new_tokens), length_penalty,
                          eos_id=eos)[0]
    tokens = [t for t in best.tokens if t != eos]
    text = tokenizer.decode_bytes(tokens).decode("utf-8", errors="replace")
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
