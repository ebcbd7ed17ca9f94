"""The bench machinery on a tiny model: it runs, reports, and counts FLOPs by the closed form (no timing asserts)."""

import numpy as np
import pytest

from nptransformer.apps import bench
from nptransformer.__main__ import main

# retain_memory=False: mallopt is process-wide, and the rest of the test session should keep malloc's defaults.
TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, batch_size=3, seq_len=6, steps=2, warmup=1,
            gemm_size=32, retain_memory=False, jobs=False)


def _closed_form_flops(V, L, C, B, T):
    n_matmul = 12 * L * C * C + 13 * L * C + 2 * C + V * C  # blocks + ln_f + the tied V x C head
    return (6 * n_matmul + 12 * L * T * C) * B * T


def test_bench_runs_and_counts_flops_by_the_closed_form():
    cfg = bench.BenchConfig(**TINY, profile=True, memory=True, generation=True)
    result = bench.run(cfg)
    assert result["flops_per_step"] == _closed_form_flops(V=11, L=2, C=8, B=3, T=6)
    assert set(result["seconds"]) == {"ours"} and result["seconds"]["ours"] > 0
    assert len(result["all_seconds"]["ours"]) == 2
    assert result["gemm_gflops"] > 0
    assert result["memory"]["ours"]["traced_mib"] > 0  # tracemalloc sees NumPy's buffers
    assert np.isfinite(result["loss_ours"])
    labels = [label for label, _ in result["profile"]]
    assert any(label.startswith("linear forward (") for label in labels)  # op, then who ran it
    assert "AdamW step" in labels and labels[-1] == "other (module glue)"
    assert result["generation"]["new_tokens"] == 4 and result["generation"]["tokens_per_s_cache"] > 0
    report = bench.format_report(result)
    for text in ("step time (ms)", "tokens/s", "achieved GFLOP/s", "MFU", "peak memory", "where the time goes",
                 "KV cache"):
        assert text in report


def test_profile_puts_the_dispatch_back():
    from nptransformer.kernels import dispatch

    forward, backward = dispatch.forward, dispatch.backward
    cfg = bench.BenchConfig(**TINY)
    idx, targets = bench.batch(cfg)
    step = bench.training_step(bench.build_model(cfg), idx, targets)
    bench.profile_ops(step, 1)
    assert dispatch.forward is forward and dispatch.backward is backward
    assert "step" not in vars(step.optimizer)


def test_reference_bench_runs_every_op_through_its_reference():
    cfg = bench.BenchConfig(**TINY, reference=True, profile=True, memory=False, generation=False)
    result = bench.run(cfg)
    ops = [label for label, _ in result["profile"] if " forward (" in label or " backward (" in label]
    assert ops and all(label.endswith("(reference)") for label in ops), ops
    assert "reference ops only" in bench.format_report(result)
    kernels = bench.run(bench.BenchConfig(**TINY, memory=False, generation=False))
    assert abs(kernels["loss_ours"] - result["loss_ours"]) < 1e-6  # the same model, either engine


def test_checkpointed_bench_counts_the_same_model_flops():
    plain = bench.BenchConfig(**TINY)
    checkpointed = bench.BenchConfig(**TINY, checkpoint_activations=True)
    model = bench.build_model(checkpointed)
    assert model.checkpoint_activations is True
    assert bench.flops_per_step(model, checkpointed) == bench.flops_per_step(bench.build_model(plain), plain)


def test_compare_torch_uses_the_same_weights_and_reports_the_ratio():
    pytest.importorskip("torch", reason="--compare-torch needs torch")
    cfg = bench.BenchConfig(**TINY, compare_torch=True, memory=False, generation=False)
    result = bench.run(cfg)
    assert abs(result["loss_ours"] - result["loss_torch"]) < 1e-5  # the same model, the same batch
    assert set(result["seconds"]) == {"ours", "torch"}
    assert set(result["products_seconds"]) == {"ours", "torch"} and len(result["linear_shapes"]) == 9
    report = bench.format_report(result)
    assert "nptransformer / PyTorch: step time" in report
    assert "the step's weight products alone (9 linear maps" in report and "the rest of the step (ms)" in report


@pytest.mark.parametrize("checkpointed", [False, True])
def test_linear_shapes_are_the_gpts_weight_products_in_call_order(checkpointed):
    from nptransformer.apps.bench_products import linear_shapes
    from nptransformer.kernels import dispatch

    forward, backward = dispatch.forward, dispatch.backward
    cfg = bench.BenchConfig(**TINY, checkpoint_activations=checkpointed)
    idx, targets = bench.batch(cfg)
    shapes = linear_shapes(bench.training_step(bench.build_model(cfg), idx, targets))
    rows, C = 3 * 6, 8
    block = [(rows, C, 3 * C), (rows, C, C), (rows, C, 4 * C), (rows, 4 * C, C)]  # in-projection, out, FF widen, FF back
    assert shapes == 2 * block + [(rows, C, 11)]  # two blocks, then the tied V x C head; recomputation not counted
    assert dispatch.forward is forward and dispatch.backward is backward


@pytest.mark.parametrize("threads", [1, 2])
def test_products_race_computes_the_three_weight_products(threads, request):
    from nptransformer import parallel
    from nptransformer.apps.bench_products import ours_once, products_step
    from nptransformer.kernels import dispatch

    if threads > 1:
        request.getfixturevalue("needs_the_pool")
    rng = np.random.default_rng(3)
    x, w, dy = rng.normal(size=(600, 40)), rng.normal(size=(130, 40)), rng.normal(size=(600, 130))
    with parallel.num_threads(threads):
        ran = dispatch.choose("linear", x, w).name  # two threads: the pool's kernel (y has 78,000 entries)
        y, dx, dw = ours_once(x, w, dy)
    assert (ran == "linear.pooled") == (threads > 1)
    for got, want in ((y, x @ w.T), (dx, dy @ w), (dw, dy.T @ x)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    products_step([(5, 3, 4), (5, 3, 4), (2, 4, 3)], "ours")()  # runs; operands made once per distinct shape
    with pytest.raises(ValueError, match="racer must be 'ours' or 'torch'"):
        products_step([(5, 3, 4)], "jax")


def test_torch_products_are_autograds():
    torch = pytest.importorskip("torch", reason="the products race needs torch")
    from nptransformer.apps.bench_products import torch_once

    x = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(30, 5, dtype=torch.float64)
    y = torch.nn.functional.linear(x, w)
    y.backward(dy)
    got = torch_once(x.detach(), w.detach(), dy)
    for a, b in zip(got, (y.detach(), x.grad, w.grad)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_cli_bench_prints_the_report(capsys):
    args = ["bench", "--vocab-size", "11", "--block-size", "8", "--layers", "1", "--heads", "2", "--d-model", "8",
            "--batch-size", "2", "--steps", "1", "--warmup", "1", "--gemm-size", "16", "--no-memory",
            "--no-generation", "--backend", "strict", "--no-retain-memory", "--no-pool"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "backend strict" in out and "step time (ms)" in out and "set_num_threads(1);" in out


def test_report_names_the_thread_pool_and_the_memory_setting(needs_the_pool):
    pooled = bench.run(bench.BenchConfig(**TINY, threads=2, memory=False, generation=False))
    assert pooled["pool_threads"] == 2 and pooled["retained_memory"] is False
    assert pooled["gemm_gflops"] == max(pooled["gemm_gflops_blas"], pooled["gemm_gflops_split"])
    report = bench.format_report(pooled)
    assert "set_num_threads(2) (BLAS held to 1 thread" in report and "returned to the OS" in report
    plain = bench.run(bench.BenchConfig(**TINY, threads=2, pool=False, memory=False, generation=False))
    assert plain["pool_threads"] == 1 and "set_num_threads(1);" in bench.format_report(plain)
    assert abs(plain["loss_ours"] - pooled["loss_ours"]) < 1e-6  # the same model and batch either way


def test_jobs_race_transformers_on_the_same_weights_and_agree():
    pytest.importorskip("transformers", reason="the jobs race transformers on PyTorch")
    from nptransformer.apps.bench_jobs import decode_job, encoder_job

    enc = encoder_job(compare=True, repeats=1)
    assert enc["sentences"] == 32 and set(enc["sentences_per_s"]) == {"ours", "torch"}
    assert enc["max_abs_diff"] < 1e-4  # the same embeddings: the export to BertModel names is right
    dec = decode_job(bench.build_model(bench.BenchConfig(**TINY)), compare=True, batch_sizes=(1, 3), repeats=1)
    assert dec["new_tokens"] == 4 and [r["batch_size"] for r in dec["rows"]] == [1, 3]
    assert all(r["same_tokens"] == 1.0 for r in dec["rows"])  # greedy tokens equal GPT2LMHeadModel.generate's
    result = {"encoder": enc, "decode": dec}
    text = "\n".join(bench._jobs_report(result))
    assert "sentences/s: nptransformer" in text and "transformers generate" in text
