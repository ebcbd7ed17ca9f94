"""nptransformer.blas_control: BLAS's thread count read and set without threadpoolctl.

threadpoolctl is the independent reference here: what our scan finds and sets must be what it reports.
Without it (a subprocess where it cannot be imported), set_num_threads must still hold BLAS to one
thread and give the count back, and Trainer must still turn the pool on by default.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nptransformer as npt
from nptransformer import blas_control, parallel

threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is the reference these tests check against")


def _reported():
    """{real path: threads} of the BLAS libraries threadpoolctl sees."""
    return {os.path.realpath(i["filepath"]): i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"}


def test_the_scan_finds_the_blas_threadpoolctl_reports_with_its_thread_count():
    found = {os.path.realpath(lib.path): lib.threads() for lib in blas_control.libraries()}
    assert found == _reported()
    assert found, "NumPy's BLAS (OpenBLAS in the wheels) was not found"


def test_setting_through_the_library_is_what_threadpoolctl_then_reads():
    libs = blas_control.libraries()
    before = _reported()
    try:
        for lib in libs:
            lib.set_threads(1)
        assert set(_reported().values()) == {1}
    finally:
        for lib in libs:
            lib.set_threads(before[os.path.realpath(lib.path)])
    assert _reported() == before


def test_describe_names_the_kind_version_and_kernel_as_threadpoolctl_does():
    infos = {os.path.realpath(i["filepath"]): i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    for lib in blas_control.libraries():  # NumPy's OpenBLAS, and SciPy's when a test has imported it
        info = infos[os.path.realpath(lib.path)]
        assert lib.kind == info["internal_api"]
        if lib.kind == "openblas":
            assert lib.describe() == f"openblas {info['version']} {info['architecture']}"


def test_without_threadpoolctl_the_pool_holds_blas_to_one_thread_and_gives_it_back():
    # threadpoolctl blocked while nptransformer works, then let back in to read what the BLAS holds.
    code = textwrap.dedent("""
        import json, sys
        sys.modules["threadpoolctl"] = None  # as if it were not installed
        import numpy as np
        import nptransformer as npt
        from nptransformer.kernels._gemm import matmul
        from nptransformer.training import default_threads

        def reported():
            del sys.modules["threadpoolctl"]
            import threadpoolctl
            counts = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
            sys.modules["threadpoolctl"] = None
            return counts

        before = reported()
        a = np.random.default_rng(0).normal(size=(300, 200))
        npt.set_num_threads(2)
        held = reported()
        split = matmul(a, a.T)
        npt.set_num_threads(1)
        print(json.dumps({"before": before, "held": held, "after": reported(), "threads": default_threads(),
                          "equal": bool(np.allclose(split, a @ a.T, rtol=1e-13))}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["before"] and out["held"] == [1] * len(out["before"]) and out["after"] == out["before"]
    assert out["equal"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert out["threads"] == cpus  # Trainer's default: the pool on every CPU


def test_a_blas_that_cannot_be_held_raises_naming_what_to_install(monkeypatch):
    monkeypatch.setattr(blas_control, "_threadpoolctl", lambda: None)
    monkeypatch.setattr(blas_control, "libraries", lambda: [])
    assert blas_control.limit(1) is None and not blas_control.can_limit()
    with pytest.raises(ImportError, match=r"nptransformer\[threads\]"):
        npt.set_num_threads(2)
    assert parallel.get_num_threads() == 1
    from nptransformer.training import default_threads
    assert default_threads() == 1


def test_limit_restores_through_threadpoolctl_when_installed():
    before = _reported()
    restore = blas_control.limit(1)
    assert set(_reported().values()) == {1}
    restore()
    assert _reported() == before
    assert np.ones(3) @ np.ones(3) == 3.0
