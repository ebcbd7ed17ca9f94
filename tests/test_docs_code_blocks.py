"""Every python block in docs/ runs under the tests (a ``>>>`` doctest) or says, visibly, why it does not.

The mark is a line of its own just above the block: ``*Not run: <reason>*``. Blocks with no language that
start like Python (``import``, ``from``) count as python blocks, so leaving the tag off does not dodge the rule.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"^\*Not run: \S.{9,}\*$")  # a reason of at least ten characters


def python_blocks(text: str):
    """(line number, body, the nearest non-blank line above the fence) of each python block."""
    for m in FENCE.finditer(text):
        lang, body = m.group(1).lower(), m.group(2)
        looks_python = lang == "" and re.match(r"(import|from) \w", body)
        if lang in ("python", "py", "pycon") or looks_python:
            above = [line for line in text[: m.start()].splitlines() if line.strip()]
            yield text[: m.start()].count("\n") + 1, body, above[-1].strip() if above else ""


def test_the_rule_sees_both_kinds_of_block():
    page = ("a\n\n```python\n>>> 1\n1\n\n```\n\n*Not run: needs a GPU to run at all.*\n\n```\nimport x\n```\n\n"
            "```python\ny = 1\n```\n")
    found = [(body.startswith(">>>"), bool(MARK.match(above))) for _, body, above in python_blocks(page)]
    assert found == [(True, False), (False, True), (False, False)]


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_runs_or_says_why_not(page):
    bad = [f"{page.relative_to(DOCS)}:{line}" for line, body, above in python_blocks(page.read_text(encoding="utf-8"))
           if ">>>" not in body and not MARK.match(above)]
    assert not bad, (f"python blocks that neither run as doctests nor carry a '*Not run: <reason>*' line "
                     f"above them: {bad}")
