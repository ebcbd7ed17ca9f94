"""Reading the small text and JSON files that come with models and tokenizers, with errors that name the file.

A bare ``UnicodeDecodeError`` or ``JSONDecodeError`` says what went wrong but
not where; these raise ValueError with the path and what was expected. A
UTF-8 byte-order mark, which some editors put at the start of a file, is
dropped rather than read as part of the first line.
"""

from __future__ import annotations

import json
import os
from typing import Any


def read_text(path: str | os.PathLike, what: str) -> str:
    """The whole file as a str; ValueError naming ``path`` and ``what`` it should be when it is not UTF-8."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not UTF-8 text ({what}): byte {e.start} is {e.object[e.start:e.start + 1]!r}"
                         ) from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON of the file; ValueError naming ``path`` and ``what`` it should be when it is not JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({what}): {e.msg} at line {e.lineno}, column {e.colno}"
                         ) from None
