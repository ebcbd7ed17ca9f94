"""``python -m nptransformer gradcheck``: every registered op, kernel, layer and model, one row each.

Ops, layers and models come from the one registry (:mod:`nptransformer.registry`:
``OPS`` and ``MODULE_CHECKS``), kernels from :data:`nptransformer.kernels.KERNELS`;
each is checked in float64 under every requested backend with
:func:`~nptransformer.gradcheck.check_grad`.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Iterator

import numpy as np

from .. import backend
from ..gradcheck import GradcheckReport, check_grad
from ..registry import OPS


def _targets() -> Iterator[tuple[str, str, Any]]:
    from ..registry import MODULE_CHECKS, load_all

    load_all()

    from ..kernels import KERNELS

    for name, spec in OPS.items():
        yield name, "op", spec
    for name, kernel in KERNELS.items():
        yield name, "kernel", kernel
    for name, build in MODULE_CHECKS.items():
        yield name, "module", build


def check_target(kind: str, target: Any, seed: int = 0) -> GradcheckReport:
    """Gradcheck one registered op spec, kernel (on its op's example, with its test settings, so that
    every split and block is reached) or module-check builder on the current backend."""
    rng = np.random.default_rng(seed)
    if kind in ("op", "kernel"):
        spec = OPS[target.op] if kind == "kernel" else target
        run = target.configured(**target.test_settings) if kind == "kernel" else target
        case = spec.example(rng)
        return check_grad((run.forward, run.backward), case.args, case.kwargs, wrt=spec.differentiable)
    mc = target(rng)
    return check_grad(mc.module, mc.inputs, mc.kwargs, wrt=mc.wrt, max_elementwise=64)


def default_backends() -> list[str]:
    """numpy, plus strict when array_api_strict is installed."""
    return ["numpy"] + (["strict"] if importlib.util.find_spec("array_api_strict") else [])


def run_cli(args: Any) -> int:
    """Print the table; exit code 1 if anything failed."""
    backends = args.backend or default_backends()
    width = max(len(name) for name, _, _ in _targets()) + 1
    print(f"{'target':<{width}} {'kind':<7} {'backend':<8} {'max abs err':>12} {'max rel err':>12} {'time':>7}  result")
    failures = []
    for name, kind, target in _targets():
        if args.only and args.only not in name:
            continue
        for b in backends:
            with backend.use(b):
                start = time.perf_counter()
                report = check_target(kind, target)
                elapsed = time.perf_counter() - start
            ok = report.passed and report.max_rel < 1e-6
            print(f"{name:<{width}} {kind:<7} {b:<8} {report.max_abs:>12.2e} {report.max_rel:>12.2e} {elapsed:>6.2f}s  {'ok' if ok else 'FAIL'}")
            if not ok:
                failures.append(report)
    for report in failures:
        print()
        print(report.table())
    print(f"\n{'all passed' if not failures else f'{len(failures)} FAILED'}")
    return 1 if failures else 0
