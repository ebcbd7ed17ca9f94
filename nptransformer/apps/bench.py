"""``python -m nptransformer bench``: how fast one GPT training step runs, and against PyTorch.

One step is what a training loop does per batch: forward, cross-entropy,
backward, AdamW update, zero_grad. The bench reports for it

- the median wall time over repeated steps, and tokens per second;
- achieved GFLOP/s, from the closed form ``GPT.flops_per_token`` (6 N per
  token for the weight GEMMs plus the attention products, recomputation by
  activation checkpointing not counted: model FLOPs, as in MFU);
- MFU: that rate over the float32 GEMM rate measured in the same run, on
  the same backend and threads: the faster of BLAS's own threads on one
  n x n x n matmul (timed before the race) and the same matmul split over
  nptransformer's threads (timed between the steps);
- peak memory: the high-water resident set (VmHWM) of a fresh process that
  builds the model and runs two steps, minus its resident set before the model
  existed: parameters, gradients, AdamW moments, activations and temporaries,
  measured the same way for nptransformer and for PyTorch. For NumPy the peak
  of ``tracemalloc`` (which sees NumPy's buffers) is printed beside it;
- inference tokens/s with and without the KV cache
  (:func:`nptransformer.generation.benchmark_generation`).

nptransformer runs with ``set_num_threads(threads)`` (:mod:`nptransformer.parallel`)
and with freed memory kept for reuse (:mod:`nptransformer.memory`; process-wide,
so PyTorch's steps get it too); ``--no-pool`` and ``--no-retain-memory``
turn these off to measure what each brings.

``--compare-torch`` races the same model in PyTorch eager (see
:mod:`nptransformer.apps.bench_torch`) with the same weights, data and thread
count, the two steps alternating so that both see the same machine load,
and races the step's weight products alone between them
(:mod:`nptransformer.apps.bench_products`): each step time is then split
into products and the rest.
``--profile`` adds where the time goes, op by op. docs/performance.md has
the measured numbers and how to read them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, fields
from typing import Any, Callable

import numpy as np

from .. import backend, blas_control, parallel
from ..kernels._gemm import matmul
from ..memory import retain_freed_memory
from ..training import blas_threads
from .bench_products import linear_shapes, products_step
from .defaults import BenchConfig


# -- building the step --------------------------------------------------------------------------
def build_model(cfg: BenchConfig) -> Any:
    """The GPT of the config on the current backend (seeded, so every process builds the same weights)."""
    from ..models import GPT

    model = GPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model, dropout=cfg.dropout,
                dtype=cfg.dtype, generator=backend.Generator(cfg.seed))
    if cfg.checkpoint_activations:
        model.checkpoint_activations = True
    return model


def batch(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids and next-token targets, (B, T) int64 host arrays."""
    rng = np.random.default_rng(cfg.seed)
    shape = (cfg.batch_size, cfg.seq_len or cfg.block_size)
    return rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape)


def training_step(model: Any, idx: np.ndarray, targets: np.ndarray, lr: float = 3e-4) -> Callable[[], Any]:
    """A closure running forward + cross-entropy + backward + AdamW step + zero_grad; returns the loss (0-d array)."""
    from ..nn import CrossEntropyLoss
    from ..optim import AdamW

    criterion, optimizer = CrossEntropyLoss(), AdamW(model.parameters(), lr=lr)
    idx, targets = backend.asarray(idx), backend.asarray(targets)

    def step() -> Any:
        loss = criterion(model(idx), targets)
        model.backward(criterion.backward())
        optimizer.step()
        optimizer.zero_grad()
        return loss

    step.optimizer = optimizer  # for the profiler
    return step


def flops_per_step(model: Any, cfg: BenchConfig) -> int:
    """Model FLOPs of one training step: ``flops_per_token(T) * B * T``."""
    return model.flops_per_token(cfg.seq_len or cfg.block_size) * cfg.tokens


# -- threads and GEMM peak ----------------------------------------------------------------------
def blas_info() -> tuple[int, str]:
    """(threads, description) of NumPy's BLAS: from threadpoolctl when installed, else from the library itself
    (:mod:`nptransformer.blas_control`); neither: os.cpu_count() threads, "unknown BLAS"."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        found = blas_control.libraries()
        if not found:
            return os.cpu_count() or 1, "unknown BLAS"
        return found[0].threads(), found[0].describe()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        return os.cpu_count() or 1, "unknown BLAS"
    info = blas[0]
    kernel = info.get("architecture") or info.get("threading_layer") or ""
    return info["num_threads"], f"{info['internal_api']} {info.get('version') or ''} {kernel}".strip()


def gemm_seconds(n: int, dtype: str, product: Callable[[Any, Any], Any] = lambda a, b: a @ b) -> Callable[[], float]:
    """A closure timing one (n, n) @ (n, n) ``product`` on the current backend; 2 n^3 FLOPs."""
    g = backend.Generator(1)
    a, b = g.normal((n, n), dtype=dtype), g.normal((n, n), dtype=dtype)

    def run() -> float:
        backend.synchronize()
        start = time.perf_counter()
        product(a, b)
        backend.synchronize()
        return time.perf_counter() - start

    run()  # warm up (BLAS threads, GPU kernels)
    return run


def _engine(cfg: BenchConfig) -> Any:
    """The kernels as configured (the default), or the reference ops alone with ``reference``."""
    from ..kernels import reference_only

    return reference_only() if cfg.reference else contextlib.nullcontext()


def pool_threads(cfg: BenchConfig, threads: int) -> int:
    """The thread count nptransformer's ops get: ``threads`` on NumPy with the pool on and BLAS holdable to one
    thread (:func:`nptransformer.blas_control.can_limit`), else 1."""
    if not cfg.pool or cfg.backend != "numpy" or threads <= 1 or not blas_control.can_limit():
        return 1
    return threads


def _timed(step: Callable[[], Any]) -> float:
    backend.synchronize()
    start = time.perf_counter()
    step()
    backend.synchronize()
    return time.perf_counter() - start


# -- the run --------------------------------------------------------------------------------------
def run(cfg: BenchConfig) -> dict:
    """Time the config's training step (and PyTorch's when asked); returns every number the report prints."""
    retained = retain_freed_memory() if cfg.retain_memory else False
    with backend.use(cfg.backend), blas_threads(cfg.threads), _engine(cfg):
        threads, blas = blas_info()
        threads = cfg.threads or threads
        pool = pool_threads(cfg, threads)
        blas_gemm = gemm_seconds(cfg.gemm_size, cfg.dtype)  # BLAS's own threads, before the pool holds it to one
        blas_peak = 2 * cfg.gemm_size**3 / float(np.median([blas_gemm() for _ in range(max(cfg.steps, 3))])) / 1e9
        model = build_model(cfg)
        idx, targets = batch(cfg)
        ours = training_step(model, idx, targets)
        result: dict[str, Any] = {"config": asdict(cfg), "threads": threads, "pool_threads": pool, "blas": blas,
                                  "retained_memory": retained, "numpy": np.__version__,
                                  "flops_per_step": flops_per_step(model, cfg), "gemm_gflops_blas": blas_peak}
        racers = {"ours": ours}
        if cfg.compare_torch:
            import torch

            from .bench_torch import torch_gpt, torch_training_step

            torch.set_num_threads(threads)
            twin = torch_gpt(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.dropout,
                             state_dict=model.state_dict())
            racers["torch"] = torch_training_step(twin, idx, targets)
            result["loss_torch"] = racers["torch"]()
            result["torch"] = torch.__version__
        with parallel.num_threads(pool):
            result["loss_ours"] = float(backend.to_numpy(ours()))  # the first step: the same weights as torch's
            if cfg.compare_torch:  # the step's weight products alone, raced with the steps (bench_products)
                shapes = linear_shapes(ours)
                result["linear_shapes"] = shapes
                racers.update({f"products_{r}": products_step(shapes, r, cfg.dtype, cfg.seed)
                               for r in ("ours", "torch")})
            gemm = gemm_seconds(cfg.gemm_size, cfg.dtype, matmul)  # split by the pool when it runs
            times: dict[str, list[float]] = {name: [] for name in list(racers) + ["gemm"]}
            for _ in range(max(cfg.warmup - 1, 0)):
                for step in racers.values():
                    step()
            for r in range(cfg.steps):
                order = list(racers.items()) if r % 2 == 0 else list(reversed(racers.items()))
                for name, step in order:
                    times[name].append(_timed(step))
                times["gemm"].append(gemm())
            result["gemm_gflops_split"] = 2 * cfg.gemm_size**3 / float(np.median(times.pop("gemm"))) / 1e9
            result["gemm_gflops"] = max(result["gemm_gflops_split"], blas_peak)
            products = {name[len("products_"):]: times.pop(name) for name in list(times) if name.startswith("products_")}
            if products:
                result["products_seconds"] = {name: float(np.median(t)) for name, t in products.items()}
            result["seconds"] = {name: float(np.median(t)) for name, t in times.items()}
            result["all_seconds"] = times
            if cfg.profile:
                result["profile"] = profile_ops(ours, cfg.steps)
            if cfg.generation:
                result["generation"] = _generation(model)
        if cfg.jobs and cfg.backend == "numpy":
            # With the library's own default of one thread (BLAS keeps its threads): holding BLAS to one
            # thread for the pool made decoding at batch 8 a third slower (docs/performance.md).
            from .bench_jobs import decode_job, encoder_job

            result["encoder"] = encoder_job(cfg.compare_torch, seed=cfg.seed)
            result["decode"] = decode_job(model, cfg.compare_torch, seed=cfg.seed)
    if cfg.memory:
        result["memory"] = {name: peak_memory(cfg, name) for name in result["seconds"]}  # the steps' racers
    return result


def _generation(model: Any) -> dict:
    from ..generation import benchmark_generation

    prompt = min(8, model.block_size // 2)  # generate() itself switches to eval mode and back
    return benchmark_generation(model, batch_size=1, prompt_len=prompt, new_tokens=min(64, model.block_size - prompt))


# -- peak memory ----------------------------------------------------------------------------------
def _rss_kib() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in KiB, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def peak_memory(cfg: BenchConfig, racer: str) -> dict:
    """Peak memory of two training steps of ``racer`` ("ours" or "torch"), measured in a fresh process.

    Returns ``{"rss_mib": ..., "traced_mib": ...}``: the high-water RSS over
    the steps minus the RSS before the model was built, and (NumPy only) the
    peak of tracemalloc over the same span; None where not measurable.
    """
    code = ("import json, sys; from nptransformer.apps.bench import _memory_child; "
            f"print(json.dumps(_memory_child(json.loads(sys.argv[1]), {racer!r})))")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg))], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory measurement of {racer} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_child(cfg_dict: dict, racer: str) -> dict:
    """Runs in the fresh process of :func:`peak_memory`."""
    import tracemalloc

    cfg = BenchConfig(**cfg_dict)
    if cfg.retain_memory:
        retain_freed_memory()
    threads = cfg.threads or blas_info()[0]
    pool = pool_threads(cfg, threads) if racer == "ours" else 1
    if racer == "torch":
        import torch

        from .bench_torch import torch_gpt, torch_training_step

        torch.set_num_threads(threads)
    traced = racer == "ours" and cfg.backend != "cupy"
    with backend.use(cfg.backend), blas_threads(cfg.threads), parallel.num_threads(pool), _engine(cfg):
        before = _rss_kib()
        if traced:
            tracemalloc.start()
        peak_device = _DevicePeak() if cfg.backend == "cupy" and racer == "ours" else None
        idx, targets = batch(cfg)
        if racer == "ours":
            step = training_step(build_model(cfg), idx, targets)
        else:
            step = torch_training_step(torch_gpt(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head,
                                                 cfg.d_model, cfg.dropout), idx, targets)
        step()  # the first step also creates the AdamW moments
        step()
        backend.synchronize()
        after = _rss_kib()
    result = {"rss_mib": None if before is None else (after[1] - before[0]) / 1024,
              "traced_mib": tracemalloc.get_traced_memory()[1] / 2**20 if traced else None}
    if peak_device is not None:
        result["device_mib"] = peak_device.peak / 2**20
    return result


class _DevicePeak:
    """Peak bytes in use in CuPy's memory pool, tracked through an allocator hook."""

    def __init__(self) -> None:
        import cupy

        self.peak, pool = 0, cupy.get_default_memory_pool()

        def malloc(nbytes: int) -> Any:
            memory = pool.malloc(nbytes)
            self.peak = max(self.peak, pool.used_bytes())
            return memory

        cupy.cuda.set_allocator(malloc)


# -- where the time goes ------------------------------------------------------------------------
def profile_ops(step: Callable[[], Any], steps: int) -> list[tuple[str, float]]:
    """Milliseconds per step spent in each op's forward and backward, and in the optimizer.

    Every call through the dispatch (:mod:`nptransformer.kernels.dispatch`)
    is timed for the duration and labelled with the op and whichever ran it
    (a kernel's name, or "reference"); times are exclusive. What is left of
    the step is module glue: residual adds, head reshapes, parameter
    bookkeeping. Rows are sorted by time, the rest last.
    """
    from ..kernels import dispatch

    totals: dict[str, float] = defaultdict(float)
    stack: list[float] = []

    def timed(label: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        stack.append(0.0)
        start = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
            backend.synchronize()
            return out
        finally:
            elapsed = time.perf_counter() - start
            totals[label] += elapsed - stack.pop()
            if stack:
                stack[-1] += elapsed

    def label(runner: Any, direction: str) -> str:
        name = getattr(runner, "name", "")
        who = "reference" if runner is dispatch.OPS.get(name) else name
        return f"{getattr(runner, 'op', name)} {direction} ({who})"

    def timed_forward(forward: Callable, op: str, *args: Any, **kwargs: Any) -> Any:
        runner = dispatch.choose(op, *args, **kwargs)
        return timed(label(runner, "forward"), forward, op, *args, **kwargs)

    def timed_backward(backward: Callable, dout: Any, ctx: Any) -> Any:
        return timed(label(ctx.runner, "backward"), backward, dout, ctx)

    optimizer = step.optimizer
    optimizer.step = lambda: timed("AdamW step", type(optimizer).step, optimizer)
    try:
        with dispatch.intercepted(timed_forward, timed_backward):
            total = sum(_timed(step) for _ in range(steps))
    finally:
        del optimizer.step
    rows = sorted(((name, 1e3 * t / steps) for name, t in totals.items()), key=lambda row: -row[1])
    return rows + [("other (module glue)", 1e3 * (total - sum(totals.values())) / steps)]


# -- the report -----------------------------------------------------------------------------------
def format_report(result: dict) -> str:
    """The text ``bench`` prints."""
    cfg = BenchConfig(**result["config"])
    T = cfg.seq_len or cfg.block_size
    lines = [
        f"nptransformer bench: GPT vocab={cfg.vocab_size} block={cfg.block_size} layers={cfg.n_layer} "
        f"heads={cfg.n_head} d_model={cfg.d_model} batch={cfg.batch_size} seq={T} {cfg.dtype} dropout={cfg.dropout}"
        + (" checkpoint_activations" if cfg.checkpoint_activations else ""),
        f"backend {cfg.backend}, numpy {result['numpy']}, BLAS {result['blas']}, {result['threads']} threads"
        + (f", torch {result['torch']}" if "torch" in result else ""),
        f"nptransformer: set_num_threads({result['pool_threads']})"
        + (" (BLAS held to 1 thread, GEMMs split by the pool)" if result["pool_threads"] > 1 else "")
        + ("; freed memory retained (nptransformer.memory)" if result["retained_memory"] else
           "; freed memory returned to the OS (malloc's defaults)")
        + ("; reference ops only (kernels off)" if cfg.reference else "; kernels on"),
        f"training step = forward + cross-entropy + backward + AdamW; median of {cfg.steps} steps "
        f"after {cfg.warmup} warm-up",
        f"model FLOPs per step (GPT.flops_per_token x B x T): {result['flops_per_step'] / 1e9:.2f} GFLOP",
        f"{cfg.dtype} GEMM peak ({cfg.gemm_size}^3 matmul, same run, {result['threads']} threads): "
        f"{result['gemm_gflops']:.1f} GFLOP/s (BLAS's threads {result['gemm_gflops_blas']:.1f} before the steps, "
        + ("split by the pool " if result["pool_threads"] > 1 else "again ")
        + f"{result['gemm_gflops_split']:.1f} between them; the faster counts)",
        "",
    ]
    names = [n for n in ("ours", "torch") if n in result["seconds"]]
    header = {"ours": "nptransformer", "torch": "PyTorch eager"}
    lines.append(f"{'':<26}" + "".join(f"{header[n]:>16}" for n in names))

    def row(label: str, values: list[str]) -> None:
        lines.append(f"{label:<26}" + "".join(f"{v:>16}" for v in values))

    seconds = [result["seconds"][n] for n in names]
    gflops = [result["flops_per_step"] / s / 1e9 for s in seconds]
    row("step time (ms)", [f"{1e3 * s:.1f}" for s in seconds])
    row("tokens/s", [f"{cfg.tokens / s:,.0f}" for s in seconds])
    row("achieved GFLOP/s", [f"{g:.1f}" for g in gflops])
    row("MFU (of GEMM peak)", [f"{100 * g / result['gemm_gflops']:.1f}%" for g in gflops])
    memory = result.get("memory")
    if memory:
        row("peak memory (MiB, RSS)", [_mib(memory[n].get("rss_mib")) for n in names])
        if memory["ours"].get("traced_mib") is not None:
            row("  tracemalloc peak (MiB)", [_mib(memory["ours"]["traced_mib"])] + ["" for _ in names[1:]])
        if memory["ours"].get("device_mib") is not None:
            row("  device pool peak (MiB)", [_mib(memory["ours"]["device_mib"])] + ["" for _ in names[1:]])
    row("loss at step 1", [f"{result['loss_' + n]:.6f}" for n in names])
    if "torch" in names:
        pairs = [a / b for a, b in zip(result["all_seconds"]["ours"], result["all_seconds"]["torch"])]
        lines.append("")
        lines.append(f"nptransformer / PyTorch: step time {seconds[0] / seconds[1]:.3f} "
                     f"(median of paired steps {float(np.median(pairs)):.3f})"
                     + (f", peak memory {memory['ours']['rss_mib'] / memory['torch']['rss_mib']:.3f}"
                        if memory and memory["ours"].get("rss_mib") and memory["torch"].get("rss_mib") else ""))
    lines += _products_report(result)
    gen = result.get("generation")
    if gen:
        lines.append("")
        lines.append(f"inference, greedy, batch {gen['batch_size']}, {gen['prompt_len']}-token prompt + "
                     f"{gen['new_tokens']} new: {gen['tokens_per_s_cache']:,.0f} tokens/s with the KV cache, "
                     f"{gen['tokens_per_s_no_cache']:,.0f} without ({gen['speedup']:.1f}x)")
    lines += _jobs_report(result)
    if result.get("profile"):
        step_ms = 1e3 * result["seconds"]["ours"]
        lines += ["", "where the time goes (nptransformer, ms per step, exclusive; timers add a little):"]
        width = max(len(label) for label, _ in result["profile"]) + 2
        lines += [f"  {label:<{width}}{ms:>9.2f}{100 * ms / step_ms:>8.1f}%" for label, ms in result["profile"]]
    return "\n".join(lines)


def _products_report(result: dict) -> list[str]:
    """The step split into its weight products (:mod:`.bench_products`) and the rest, for both libraries."""
    products = result.get("products_seconds")
    if not products:
        return []
    step, n = result["seconds"], len(result["linear_shapes"])
    rest = {name: step[name] - products[name] for name in ("ours", "torch")}
    return ["",
            f"the step's weight products alone ({n} linear maps x 3: x W^T, dy W, dy^T x; no bias, activation or "
            "attention), raced with the steps:",
            f"  products (ms): nptransformer {1e3 * products['ours']:.1f}, PyTorch {1e3 * products['torch']:.1f}; "
            f"ratio {products['ours'] / products['torch']:.3f}",
            f"  the rest of the step (ms): nptransformer {1e3 * rest['ours']:.1f}, PyTorch {1e3 * rest['torch']:.1f}; "
            f"ratio {rest['ours'] / rest['torch']:.3f}"]


def _jobs_report(result: dict) -> list[str]:
    """The encoder and decode jobs' lines (:mod:`.bench_jobs`), with the ratio to transformers when raced."""
    lines = []
    enc = result.get("encoder")
    if enc:
        rates = enc["sentences_per_s"]
        lines += ["", "inference jobs with the library's defaults (set_num_threads(1): BLAS keeps its own threads)",
                  f"encoder: all-MiniLM-L6-v2-shaped BERT, {enc['sentences']} sentences ({enc['tokens']} tokens, "
                  f"padded to {enc['padded_length']}), mean-pooled embeddings, no tokenizer",
                  "  ours: sentence_embeddings (the encoder on the real tokens, packed); transformers: the padded batch"]
        line = f"  sentences/s: nptransformer {rates['ours']:,.1f}"
        if "torch" in rates:
            line += (f", transformers {rates['torch']:,.1f}; ratio {rates['ours'] / rates['torch']:.3f} "
                     f"(embeddings differ by {enc['max_abs_diff']:.1e} at most)")
        lines.append(line)
    dec = result.get("decode")
    if dec:
        lines += [f"decode: greedy with the KV cache, {dec['prompt_len']}-token prompt + {dec['new_tokens']} new "
                  "tokens, the bench's GPT"]
        for row in dec["rows"]:
            rates = row["tokens_per_s"]
            line = f"  batch {row['batch_size']}: tokens/s nptransformer {rates['ours']:,.0f}"
            if "torch" in rates:
                line += (f", transformers generate {rates['torch']:,.0f}; ratio {rates['ours'] / rates['torch']:.3f} "
                         f"(same tokens: {100 * row['same_tokens']:.0f}%)")
            lines.append(line)
    return lines


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def run_cli(args: Any) -> int:
    """Entry point of ``python -m nptransformer bench``."""
    names = {f.name for f in fields(BenchConfig)}
    cfg = BenchConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    result = run(cfg)
    print(format_report(result))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
