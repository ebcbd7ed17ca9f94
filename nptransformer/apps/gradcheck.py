"""``python -m nptransformer gradcheck``: every registered op, kernel, layer and model, one row each.

Ops, layers and models come from the one registry (:mod:`nptransformer.registry`:
``OPS`` and ``MODULE_CHECKS``), kernels from :data:`nptransformer.kernels.KERNELS`;
each is checked in float64 under every requested backend with
:func:`~nptransformer.gradcheck.check_grad`. ``--module NAME`` imports a
module of your own first (a dotted name importable from the current
directory, or a path to a ``.py`` file), so the ops and layers it registers
join the table.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path
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
    """Gradcheck one registered op spec, kernel (on its example, with its test settings, so that
    every split and block is reached) or module-check builder on the current backend.

    ``seed`` seeds the inputs and, through :func:`nptransformer.backend.manual_seed`, the layers' own
    initialisation: a target's check is the same whatever ran before it."""
    backend.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if kind in ("op", "kernel"):
        spec = OPS[target.op] if kind == "kernel" else target
        run = target.configured(**target.test_settings) if kind == "kernel" else target
        case = target.example(rng)
        return check_grad((run.forward, run.backward), case.args, case.kwargs, wrt=spec.differentiable)
    mc = target(rng)
    return check_grad(mc.module, mc.inputs, mc.kwargs, wrt=mc.wrt, max_elementwise=64)


def default_backends() -> list[str]:
    """numpy, plus strict when array_api_strict is installed."""
    return ["numpy"] + (["strict"] if importlib.util.find_spec("array_api_strict") else [])


def import_user_module(name: str) -> None:
    """Import a learner's module so that its ``register_op`` / ``register_module_check`` calls run.

    ``name`` is a dotted module name, looked up from the current directory
    first, or a path to a ``.py`` file. Raises ImportError naming what was
    tried.
    """
    path = Path(name)
    if name.endswith(".py"):
        if not path.is_file():
            raise ImportError(f"--module: no file {name!r} (expected a .py file or an importable module name)")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the console script, unlike python -m, leaves the cwd out
    importlib.import_module(name)


# Under the strict backend an op that calls np.* on its inputs fails converting them; say what to do.
_STRICT_HINT = ("under the strict backend, inputs are array_api_strict arrays: write the op with "
                "xp = nptransformer.backend.get_array_module(x) and xp.exp, xp.sum ... instead of np.*")


def _run_one(name: str, kind: str, target: Any, b: str, width: int) -> GradcheckReport | str | None:
    """Check one target on one backend, print its line; return the report or error text when it failed."""
    if kind == "kernel" and b not in target.backends:
        print(f"{name:<{width}} {kind:<7} {b:<8} {'':>12} {'':>12} {'':>7}  skipped: written for "
              f"{', '.join(target.backends)}")
        return None
    with backend.use(b):
        start = time.perf_counter()
        try:
            report = check_target(kind, target)
        except Exception as exc:  # a learner's op may raise anything; the table goes on
            elapsed = time.perf_counter() - start
            print(f"{name:<{width}} {kind:<7} {b:<8} {'error':>12} {'':>12} {elapsed:>6.2f}s  FAIL")
            hint = f"\n  hint: {_STRICT_HINT}" if b == "strict" else ""
            return f"{name} [{b}] raised {type(exc).__name__}: {exc}{hint}"
        elapsed = time.perf_counter() - start
    ok = report.passed and report.max_rel < 1e-6
    print(f"{name:<{width}} {kind:<7} {b:<8} {report.max_abs:>12.2e} {report.max_rel:>12.2e} {elapsed:>6.2f}s  "
          f"{'ok' if ok else 'FAIL'}")
    return None if ok else report


def run_cli(args: Any) -> int:
    """Print the table; exit code 1 if anything failed, 2 if ``--only`` or ``--module`` is wrong."""
    for name in getattr(args, "module", None) or []:
        try:
            import_user_module(name)
        except Exception as exc:  # a learner's module may fail in any way; say which and why, then stop
            print(f"gradcheck: cannot import --module {name!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    backends = args.backend or default_backends()
    targets = [t for t in _targets() if not args.only or args.only in t[0]]
    if not targets:
        names = ", ".join(sorted(name for name, _, _ in _targets()))
        print(f"gradcheck: --only {args.only!r} matches no registered target; the names are: {names}",
              file=sys.stderr)
        return 2
    width = max(len(name) for name, _, _ in targets) + 1
    print(f"{'target':<{width}} {'kind':<7} {'backend':<8} {'max abs err':>12} {'max rel err':>12} {'time':>7}  result")
    failures = [f for name, kind, target in targets for b in backends
                if (f := _run_one(name, kind, target, b, width)) is not None]
    for failure in failures:
        print()
        print(failure if isinstance(failure, str) else failure.table())
    print(f"\n{'all passed' if not failures else f'{len(failures)} FAILED'}")
    return 1 if failures else 0
