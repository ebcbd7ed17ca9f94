"""Argument parsing for ``python -m nptransformer``: one subcommand per job.

Each command lives with the code it drives (``gradcheck_suite.run_cli`` ...);
this module only wires names to functions, importing each lazily so that
``nptransformer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable


def _lazy(module: str, func: str) -> Callable[[Any], int]:
    def run(args: Any) -> int:
        return getattr(importlib.import_module(f"nptransformer.{module}"), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand attached."""
    parser = argparse.ArgumentParser(prog="nptransformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="commands")

    g = sub.add_parser("gradcheck", help="check every op, layer and model's backward against finite differences")
    g.add_argument("--backend", action="append", choices=["numpy", "strict", "cupy"],
                   help="backend(s) to run under (repeatable; default: numpy and strict when installed)")
    g.add_argument("--only", default=None, help="run only targets whose name contains this text")
    g.set_defaults(run=_lazy("gradcheck_suite", "run_cli"))
    return parser
