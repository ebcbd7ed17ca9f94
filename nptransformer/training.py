"""A small training loop: steps, a progress line, validation, checkpoints, resume, divergence stop.

One step is the five lines of docs/optim.md, plus a check that the loss is
a finite number *before* backward touches anything::

    loss = criterion(model(*inputs), targets)
    model.backward(criterion.backward())
    clip_grad_norm(model.parameters(), max_grad_norm)
    optimizer.step(); schedule.step(); optimizer.zero_grad()

:class:`Trainer` runs that step ``max_steps`` times and around it:

- prints ``step | loss | lr | tokens/s | elapsed | ETA`` every ``log_every``
  steps, rewriting one line with ``\\r`` on a terminal and printing one line
  per interval otherwise (logs, CI);
- calls ``eval_fn(model)`` every ``eval_every`` steps in eval mode under
  ``no_grad`` and prints what it returns;
- saves a checkpoint every ``checkpoint_every`` steps and at the end, and
  with ``resume=True`` continues from it, bit-identical to a run that never
  stopped (the batch generator's state is in the checkpoint);
- stops with :class:`TrainingDiverged` when the loss is nan or inf, naming
  the step and the last good checkpoint, instead of training on garbage.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, TextIO

from . import _checks, backend, blas_control
from . import parallel as parallel_pool
from .backend import Generator, to_numpy
from .memory import retain_freed_memory
from .generation.inference import inference
from .io import load_checkpoint, save_checkpoint
from .optim import clip_grad_norm, grads_are_finite


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS to ``n`` threads inside the block (``None``: leave BLAS alone); through
    :func:`nptransformer.blas_control.limit`, so threadpoolctl is used when installed and OpenBLAS's or MKL's
    own functions otherwise.

    These models multiply small matrices. On a 2-core machine shared with
    other processes, two OpenBLAS threads made a training step 15 to 25
    times slower than one thread (docs/training.md, "BLAS threads").
    """
    if n is None:
        yield
        return
    restore = blas_control.limit(n)
    if restore is None:
        print(f"(this BLAS's threads cannot be set from Python: not limited to {n}; "
              f"set OPENBLAS_NUM_THREADS={n} before starting Python, or install threadpoolctl)", flush=True)
        yield
        return
    try:
        yield
    finally:
        restore()


def default_threads() -> int:
    """The threads :class:`Trainer` splits a step's ops over when not told: the CPUs this process may
    run on, on the NumPy backend when BLAS can be held to one thread (the pool needs it:
    :func:`nptransformer.blas_control.can_limit`); 1 otherwise."""
    if backend.get_backend() != "numpy" or not blas_control.can_limit():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus or 1)


class TrainingDiverged(RuntimeError):
    """The loss became nan or inf. ``step``: the step that produced it (its update was not applied);
    ``checkpoint``: (path, step) of the last checkpoint saved or resumed from, or None."""

    def __init__(self, step: int, loss: float, checkpoint: tuple[str, int] | None):
        self.step, self.loss, self.checkpoint = step, loss, checkpoint
        if checkpoint is None:
            where = "no checkpoint was saved (give the Trainer a checkpoint path to keep one)"
        else:
            where = (f"last good checkpoint: {checkpoint[0]} (step {checkpoint[1]}); resume from it, "
                     "e.g. with a lower learning rate")
        super().__init__(f"loss is {loss} at step {step}: training stopped before this step changed any weight; "
                         f"{where}")


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``'1m15s'``, ``3725`` -> ``'1h02m05s'``."""
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Trainer:
    """Trains ``model`` on batches from ``batch_fn``; see the module docstring for what it does around each step.

    - ``batch_fn(generator) -> (inputs, targets)``: ``inputs`` a tuple of
      model inputs (``(idx,)`` for GPT, ``(src, tgt_in)`` for the
      encoder-decoder), ``targets`` the ids ``criterion`` compares the
      logits with. Draw randomness from ``generator`` only (default
      ``Generator(0)``), so that a checkpoint captures it.
    - ``criterion``: e.g. :class:`~nptransformer.nn.CrossEntropyLoss`.
    - ``schedule``: an LR schedule stepped after every optimizer step, or None.
    - ``max_grad_norm``: global gradient-norm clip (None: no clipping).
    - ``eval_fn(model) -> float or dict of floats``: validation metrics.
    - ``checkpoint``: path of the checkpoint file (None: no checkpoints).
    - ``out``: where progress goes (default sys.stdout).
    - ``parallel``: a parallel mode from :mod:`nptransformer.distributed`
      (data, tensor or pipeline parallelism over MPI) that runs forward,
      backward and clipping across ranks; only its rank 0 prints and writes
      checkpoints (docs/distributed.md).
    - ``scaler``: a :class:`~nptransformer.optim.GradScaler` for float16
      training (``model`` a :class:`~nptransformer.nn.MixedPrecision` built
      with the same scaler): a step whose gradients overflowed is skipped
      (weights and optimizer untouched), logged, and the scale halved; the
      scaler's state is saved in checkpoints (docs/precision-and-compression.md).
    - ``threads``: what :meth:`fit` splits each step's ops over
      (:func:`nptransformer.set_num_threads`, restored after). None, the
      default: the count already set when it is above 1, else
      :func:`default_threads` in a single process (one per rank under
      ``parallel``); with more than one, :meth:`fit` also keeps freed memory
      for the next step (:func:`nptransformer.memory.retain_freed_memory`,
      process-wide). On two cores the train_char app's GPT (d_model 128,
      4 layers, batch 32 x 128) stepped in 208 ms with two threads against
      328 with one. Results are the same bits from run to run at a given
      count, and a resumed run matches one that never stopped.

    ``history`` collects ``{"step", "loss"}`` per log interval and
    ``{"step", <metric>: value}`` per validation; it is saved in checkpoints.
    """

    def __init__(self, model: Any, optimizer: Any, criterion: Any, batch_fn: Callable[[Generator], tuple],
                 *, schedule: Any = None, max_grad_norm: float | None = 1.0, generator: Generator | None = None,
                 eval_fn: Callable[[Any], Any] | None = None, checkpoint: str | os.PathLike | None = None,
                 out: TextIO | None = None, parallel: Any = None, scaler: Any = None, threads: int | None = None):
        if threads is not None:
            _checks.check_int_at_least("threads", threads, 1)
        self.model, self.optimizer, self.criterion, self.batch_fn = model, optimizer, criterion, batch_fn
        self.threads = threads
        self.parallel = _SingleProcess() if parallel is None else parallel
        self.schedule, self.max_grad_norm, self.eval_fn = schedule, max_grad_norm, eval_fn
        self.scaler = scaler
        self.generator = Generator(0) if generator is None else generator
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.out = sys.stdout if out is None else out
        if not self.parallel.is_main:
            self.out = _Discard()  # the progress line is printed once, by rank 0
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: tuple[str, int] | None = None
        self._line_open = False  # a \r progress line is waiting for its newline

    # -- one step -----------------------------------------------------------------
    def train_step(self, inputs: tuple, targets: Any) -> float:
        """Forward, loss, backward, clip, update, schedule; returns the loss as a float.

        Raises :class:`TrainingDiverged` (weights untouched) when the loss is not finite.
        """
        value = self.parallel.forward_loss(self.model, self.criterion, inputs, targets, self.step)
        if not math.isfinite(value):
            self.model.clear_saved()
            self.criterion.clear_saved()
            raise TrainingDiverged(self.step + 1, value, self.last_checkpoint)
        self.parallel.backward(self.model, self.criterion)
        if self.scaler is not None and not self._scaled_grads_ok():
            self.step += 1
            return value
        if self.max_grad_norm is not None:
            self.parallel.clip_grad_norm(self.model, self.max_grad_norm)
        self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update(found_inf=False)
        if self.schedule is not None:
            self.schedule.step()
        self.optimizer.zero_grad()
        self.step += 1
        return value

    def _scaled_grads_ok(self) -> bool:
        """False (step skipped, logged, scale backed off, gradients dropped) when a gradient overflowed."""
        if grads_are_finite(self.model.parameters()):
            return True
        scale = self.scaler.scale
        self.scaler.update(found_inf=True)
        self.optimizer.zero_grad()
        if self.schedule is not None:
            self.schedule.step()  # the schedule counts steps taken or skipped, so max_steps still ends it
        self._end_line()
        print(f"step {self.step + 1}: gradient overflow at loss scale {scale:g}; update skipped, "
              f"scale now {self.scaler.scale:g}", file=self.out, flush=True)
        return False

    # -- the loop -------------------------------------------------------------------
    def fit(self, max_steps: int, *, log_every: int = 10, eval_every: int | None = None,
            checkpoint_every: int | None = None, resume: bool = False) -> list[dict[str, float]]:
        """Train until ``self.step == max_steps``; returns ``history``.

        ``resume=True`` first loads ``checkpoint`` when that file exists (and
        says so), continuing from its step. Validation runs every
        ``eval_every`` steps and after the last one; checkpoints are saved
        every ``checkpoint_every`` steps and after the last one.
        """
        _checks.check_positive_int("max_steps", max_steps)
        _checks.check_positive_int("log_every", log_every)
        for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
            if value is not None:
                _checks.check_positive_int(name, value)
        if eval_every is not None and self.eval_fn is None:
            raise ValueError("eval_every needs an eval_fn: Trainer(..., eval_fn=lambda model: validation_loss)")
        if checkpoint_every is not None and self.checkpoint is None:
            raise ValueError("checkpoint_every needs a checkpoint path: Trainer(..., checkpoint='run.npz')")
        with self._step_threads():
            return self._fit(max_steps, log_every, eval_every, checkpoint_every, resume)

    def _step_threads(self) -> Any:
        """The ``threads`` setting (class docstring) as a context for :meth:`fit`'s loop."""
        n = self.threads
        if n is None:
            n = parallel_pool.get_num_threads()
            if n == 1 and isinstance(self.parallel, _SingleProcess):
                n = default_threads()
        if n > 1:
            retain_freed_memory()
        return parallel_pool.num_threads(n)

    def _fit(self, max_steps: int, log_every: int, eval_every: int | None, checkpoint_every: int | None,
             resume: bool) -> list[dict[str, float]]:
        if resume:
            self._resume()
        start_step, start_time = self.step, time.perf_counter()
        train_time, tokens, losses = 0.0, 0, []
        while self.step < max_steps:
            t0 = time.perf_counter()
            inputs, targets = self.batch_fn(self.generator)
            losses.append(self.train_step(inputs, targets))
            train_time += time.perf_counter() - t0
            tokens += math.prod(targets.shape)
            last = self.step == max_steps
            if self.step % log_every == 0 or last:
                self.history.append({"step": self.step, "loss": sum(losses) / len(losses)})
                eta = (max_steps - self.step) * train_time / (self.step - start_step)  # mean step time so far
                self._progress(self._status(max_steps, tokens / train_time, time.perf_counter() - start_time, eta))
                losses = []
            if eval_every is not None and (self.step % eval_every == 0 or last):
                self.evaluate()
            if self.checkpoint is not None and ((checkpoint_every and self.step % checkpoint_every == 0) or last):
                self.save()
        self._end_line()
        return self.history

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` (eval mode, no_grad), record and print its metrics."""
        with inference(self.model, self.model.parameters()[0].data):
            result = self.eval_fn(self.model)
        metrics = result if isinstance(result, dict) else {"val_loss": result}
        self.history.append({"step": self.step, **{k: float(v) for k, v in metrics.items()}})
        self._end_line()
        shown = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"step {self.step} | {shown}", file=self.out, flush=True)
        return metrics

    # -- checkpoints ----------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint (model, optimizer, schedule, generators, step, history)."""
        self.parallel.save_checkpoint(self.checkpoint, self.model, self.optimizer, step=self.step,
                                      schedule=self.schedule, generator=self.generator, history=self.history,
                                      **({} if self.scaler is None else {"scaler": self.scaler.state_dict()}))
        self.last_checkpoint = (self.checkpoint, self.step)

    def _resume(self) -> None:
        if self.checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path: Trainer(..., checkpoint='run.npz')")
        if not os.path.exists(self.checkpoint):
            print(f"no checkpoint at {self.checkpoint}: starting from step 0", file=self.out, flush=True)
            return
        state = self.parallel.load_checkpoint(self.checkpoint, self.model, self.optimizer, self.schedule,
                                              self.generator)
        self.step, self.history = state["step"], list(state.get("history", []))
        if self.scaler is not None:
            if "scaler" not in state:
                raise ValueError(f"{self.checkpoint} holds no loss-scaler state, but this Trainer has a scaler")
            self.scaler.load_state_dict(state["scaler"])
        self.last_checkpoint = (self.checkpoint, self.step)
        print(f"resumed from {self.checkpoint} at step {self.step}", file=self.out, flush=True)

    # -- output ---------------------------------------------------------------------
    def _status(self, max_steps: int, tokens_per_s: float, elapsed: float, eta: float) -> str:
        return (f"step {self.step:>{len(str(max_steps))}}/{max_steps} | loss {self.history[-1]['loss']:.4f}"
                f" | lr {self.optimizer.param_groups[0]['lr']:.2e} | {tokens_per_s:,.0f} tok/s"
                f" | elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}")

    def _progress(self, line: str) -> None:
        if _is_tty(self.out):
            self.out.write("\r" + line + "\x1b[K")  # \x1b[K clears what a longer previous line left
            self._line_open = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self._line_open = False


class _SingleProcess:
    """The step of one process: what a parallel mode (nptransformer.distributed) does across ranks."""

    is_main = True

    def forward_loss(self, model: Any, criterion: Any, inputs: tuple, targets: Any, step: int) -> float:
        loss = criterion(model(*inputs), targets)
        return float(to_numpy(loss))  # one host copy per step: needed to see nan before it spreads

    def backward(self, model: Any, criterion: Any) -> None:
        model.backward(criterion.backward())

    def clip_grad_norm(self, model: Any, max_norm: float) -> Any:
        return clip_grad_norm(model.parameters(), max_norm)

    def save_checkpoint(self, path: str, model: Any, optimizer: Any, **kwargs: Any) -> None:
        save_checkpoint(path, model, optimizer, **kwargs)

    def load_checkpoint(self, path: str, model: Any, optimizer: Any, schedule: Any, generator: Any) -> dict:
        return load_checkpoint(path, model, optimizer, schedule, generator)


class _Discard:
    """A text stream that drops what is written: the output of ranks other than 0."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
