"""``python -m nptransformer generate``: continue a prompt with a GPT-2 checkpoint, streaming the text."""

from __future__ import annotations

import sys
from typing import Any

from ..textgen import generate_text, load_text_model, stream_text


def run_cli(args: Any) -> int:
    """``nptransformer generate --model DIR --prompt TEXT``: print the prompt, then its continuation as it comes.

    Greedy, ``--sample`` (temperature, top-k, top-p, seed) or ``--num-beams N``
    (printed when the search ends: beam search ranks whole hypotheses).
    """
    model, tokenizer = load_text_model(args.model, dtype=args.dtype)
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop or ())
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    if args.num_beams > 1:
        out.write(generate_text(model, tokenizer, args.prompt, num_beams=args.num_beams,
                                length_penalty=args.length_penalty, **kwargs))
    else:
        for piece in stream_text(model, tokenizer, args.prompt, **kwargs):
            out.write(piece)
            out.flush()  # each piece as soon as the model produced it
    out.write("\n")
    return 0
