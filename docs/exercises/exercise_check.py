"""Run ``check_grad`` on an exercise's forward and your backward, on every case the exercise lists.

Each exercise file ends with ``main(...)``, so ``python docs/exercises/exercise_silu.py`` prints one
gradient-check table per case, under NumPy and (when ``array_api_strict`` is installed) under the strict
backend, which accepts only array-API code (``xp = get_array_module(x)``; docs/gradcheck.md).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Callable, Iterable

import numpy as np

from nptransformer import backend
from nptransformer.gradcheck import GradcheckReport, check_grad

Cases = Callable[[np.random.Generator], Iterable[tuple[tuple, dict]]]


def backends() -> list[str]:
    """numpy, plus strict when array_api_strict is installed."""
    return ["numpy"] + (["strict"] if importlib.util.find_spec("array_api_strict") else [])


def check(forward: Callable, backward: Callable, cases: Cases, label: str,
          backend_names: Iterable[str] | None = None) -> list[GradcheckReport]:
    """One report per (backend, case); the cases come from ``cases(rng)`` with a fixed seed."""
    reports = []
    for name in backend_names or backends():
        with backend.use(name):
            for args, kwargs in cases(np.random.default_rng(0)):
                reports.append(check_grad((forward, backward), list(args), kwargs, label=f"{label} {kwargs}"))
    return reports


def main(forward: Callable, backward: Callable, cases: Cases, label: str) -> int:
    """Print every table; exit status 0 when every case passed."""
    reports = check(forward, backward, cases, label)
    for report in reports:
        print(report.table(), end="\n\n")
    failed = sum(not r.passed for r in reports)
    print(f"{label}: all {len(reports)} checks passed" if not failed else f"{label}: {failed} of {len(reports)} FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit("run an exercise file, e.g. python docs/exercises/exercise_silu.py")
