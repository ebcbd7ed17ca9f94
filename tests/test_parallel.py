"""The intra-op pool (nptransformer.parallel) and the splits it drives, checked against plain NumPy and finite differences."""

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nptransformer as npt
from nptransformer import parallel
from nptransformer.apps.gradcheck import _targets, check_target

threadpoolctl = pytest.importorskip("threadpoolctl", reason="the pool holds BLAS to one thread through threadpoolctl")


@pytest.mark.parametrize("threads", [2], indirect=True, ids=["pool"])
@pytest.mark.parametrize("name,kind,target", list(_targets()), ids=[t[0] for t in _targets()])
def test_every_op_layer_and_model_passes_the_gradient_check_with_every_array_split(name, kind, target, threads):
    # With 2 threads and every kernel's test settings every GEMM, elementwise chain and attention
    # product is cut into slabs (the serial run is test_ops_gradcheck's).
    # 1e-5: a model's smallest gradients (a deep layer norm's gain, about 1e-4) carry finite-difference
    # noise of about 1e-10, relative 1e-6; a wrong backward is off by far more.
    report = check_target(kind, target)
    assert report.passed and report.max_rel < 1e-5, report.table()


@given(st.lists(st.integers(0, 10**6), min_size=0, max_size=40), st.integers(1, 4))
def test_balanced_runs_cover_the_items_in_order_and_share_the_total(sizes, n):
    with parallel.num_threads(n):
        runs = parallel.balanced(sizes)
    assert runs[0][0] == 0 and runs[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))  # contiguous, in order
    assert len(runs) <= n
    total = sum(sizes)
    if len(runs) > 1:  # each run ends at the first item to cross its share, so it is at most a share plus one item
        share = total / len(runs)
        assert all(sum(sizes[lo:hi]) <= share + max(sizes[lo:hi]) for lo, hi in runs)


@given(st.integers(0, 5000), st.integers(1, 4))
def test_slabs_cut_rows_into_nearly_equal_parts(length, n):
    with parallel.num_threads(n):
        parts = parallel.slabs(length, length * 100)
    sizes = [hi - lo for lo, hi in parts]
    assert sum(sizes) == length and parts[0][0] == 0
    assert max(sizes) - min(sizes) <= 1
    assert len(parts) == (max(1, min(n, length, length * 100 // parallel.MIN_ELEMENTS)))


def test_a_worker_error_reaches_the_caller_and_the_pool_still_works():
    def fail_in_second_slab(lo, hi):
        if lo > 0:
            raise ValueError(f"slab {lo}:{hi}")

    with parallel.num_threads(2):
        with pytest.raises(ValueError, match="slab 5:10"):
            parallel.run(fail_in_second_slab, [(0, 5), (5, 10)])
        seen = []
        parallel.run(lambda lo, hi: seen.append((lo, hi)), [(0, 5), (5, 10)])
        assert sorted(seen) == [(0, 5), (5, 10)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_pipeline_produces_every_part_once_and_consumes_them_in_order_here(n):
    import threading
    import time

    parts = [(i, i + 1) for i in range(9)]
    produced, consumed, here = [], [], threading.get_ident()

    def produce(lo, hi):
        time.sleep(0.002 * (lo % 3))  # uneven parts: the threads finish out of order
        produced.append(lo)

    def consume(lo, hi):
        assert threading.get_ident() == here and lo in produced  # on the caller, after its part
        consumed.append(lo)

    with parallel.num_threads(n):
        parallel.pipeline(produce, consume, parts)
    assert sorted(produced) == list(range(9)) and consumed == list(range(9))


@pytest.mark.parametrize("fail", ["produce", "consume"])
def test_a_pipeline_error_reaches_the_caller_after_every_part_finished(fail):
    produced = []

    def produce(lo, hi):
        if fail == "produce" and lo == 3:
            raise RuntimeError("part 3")
        produced.append(lo)

    def consume(lo, hi):
        if fail == "consume" and lo == 1:
            raise RuntimeError("part 1")

    with parallel.num_threads(2):
        with pytest.raises(RuntimeError, match="part"):
            parallel.pipeline(produce, consume, [(i, i + 1) for i in range(6)])
        assert sorted(produced) == [i for i in range(6) if not (fail == "produce" and i == 3)]
        parallel.pipeline(produce, lambda lo, hi: None, [(10, 11), (11, 12)])  # the pool still works
    assert produced[-2:] in ([10, 11], [11, 10])


def test_num_threads_restores_the_count_and_blas_threads():
    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert npt.get_num_threads() == 1
    with npt.num_threads(2):
        assert npt.get_num_threads() == 2
        assert all(n == 1 for n in blas_threads())  # BLAS held to one thread while the pool runs
    assert npt.get_num_threads() == 1 and blas_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_set_num_threads_rejects_what_is_not_a_positive_int(bad):
    with pytest.raises((TypeError, ValueError), match="n"):
        npt.set_num_threads(bad)
    assert npt.get_num_threads() == 1


def test_retaining_freed_memory_stops_the_page_faults_of_repeated_allocations():
    # Like a training step: 20 arrays of 4 MiB allocated (the activations), then all freed (the
    # backward). With malloc's defaults the freed top of the heap goes back to the OS and the next
    # rounds fault their pages in again (up to 20,480 faults a round); with the memory kept, only the
    # first round does.
    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from nptransformer.memory import retain_freed_memory
        if sys.argv[1] == "retain":
            assert retain_freed_memory()
        x = np.ones(1 << 20, dtype=np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            arrays = [x * 2.0 for _ in range(20)]
            del arrays
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc's; elsewhere retain_freed_memory does nothing")
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "retain")}
    assert faults["default"] > 3 * 20 * 1024 and faults["retain"] < 2 * 20 * 1024, faults
