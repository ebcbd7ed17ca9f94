"""One dispatch for every op: the first registered kernel that is enabled and applies, else the reference.

A kernel is a fast implementation of a reference op from
:mod:`nptransformer.functional`: same arguments, same outputs, same
gradients, and a context that only its own backward reads. The dispatch
remembers who ran the forward, so the backward always matches it:

    out, ctx = forward("softmax", x, axis=-1)    # a kernel, or functional.softmax_forward
    dx = backward(dx_out, ctx)                    # that same implementation's backward

Choosing is by op, sizes and settings (:meth:`Kernel.applies`), never by the
type of a layer. What is fast is on by default; :func:`reference_only` runs
the textbook code instead (to compare, to teach, to debug), and
:func:`disabled` turns single kernels off.

>>> import numpy as np
>>> out, ctx = forward("softmax", np.zeros((2, 4)))
>>> out.tolist()[0], ctx.runner in (KERNELS.get("softmax.rows"), OPS["softmax"])
([0.25, 0.25, 0.25, 0.25], True)
>>> with reference_only():
...     _, ctx = forward("softmax", np.zeros((2, 4)))
>>> ctx.runner is OPS["softmax"]
True
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

from ..registry import OPS


class Kernel:
    """A fast variant of the reference op ``op``, registered under ``name``.

    ``defaults``: the tuning settings (block sizes, split thresholds) it runs
    with; ``test_settings``: settings small enough that test-sized inputs
    reach every split and block (the kernel-vs-reference sweep uses them, so
    no test patches a module constant). Subclasses implement
    :meth:`applies`, :meth:`forward` and :meth:`backward`; ``forward`` takes
    the reference op's arguments and returns ``(out, ctx)``, ``backward``
    takes ``(dout, ctx)`` and returns what the reference backward returns.
    ``backends``: the backends its code is written for (the test sweep runs
    it under those; :meth:`applies` is False for the others).
    """

    op: ClassVar[str] = ""
    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    test_settings: ClassVar[dict] = {}
    backends: ClassVar[tuple] = ("numpy", "strict", "cupy")

    def __init__(self, **settings: Any):
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {unknown}; it has {sorted(self.defaults)}")
        self.settings = {**self.defaults, **settings}

    def configured(self, **settings: Any) -> "Kernel":
        """A copy with some settings replaced (``kernel.configured(**kernel.test_settings)``)."""
        return type(self)(**{**self.settings, **settings})

    def applies(self, *args: Any, **kwargs: Any) -> bool:
        """Whether this kernel should run for these arguments (backend, sizes, thread count)."""
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """The reference forward's arguments -> ``(out, ctx)``."""
        raise NotImplementedError

    def backward(self, dout: Any, ctx: Any) -> Any:
        """The reference backward's result, from this kernel's own ``ctx``."""
        raise NotImplementedError

    def cases(self, t: Any) -> Any:
        """A hypothesis strategy of inputs for the kernel-vs-reference sweep: the reference op's, unless a
        kernel needs inputs the reference's strategy rarely draws (a causal mask, long rows)."""
        return OPS[self.op].cases(t)

    def example(self, rng: Any) -> Any:
        """One input :class:`~nptransformer.registry.Case` for the gradient check CLI: the reference op's,
        unless the kernel takes only some of the op's inputs."""
        return OPS[self.op].example(rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} for {self.op!r}, {self.settings})"


#: Kernel name -> the registered kernel, in registration order (the order the dispatch tries them).
KERNELS: dict[str, Kernel] = {}
_by_op: dict[str, list[str]] = {}  # op -> its kernels' names in registration order: no scan of KERNELS per call
_disabled: set[str] = set()
_reference_only = False
_round_results: Callable[[Any], Any] | None = None  # set by rounded_results(): a narrower dtype, emulated


def register_kernel(kernel: Kernel) -> Kernel:
    """Add a kernel to :data:`KERNELS`; its reference op must be registered (a kernel needs a reference)."""
    if kernel.op not in OPS:
        raise ValueError(f"kernel {kernel.name!r} implements {kernel.op!r}, which is not a registered reference op")
    if kernel.name in KERNELS:
        raise ValueError(f"kernel {kernel.name!r} is registered twice")
    KERNELS[kernel.name] = kernel
    _by_op.setdefault(kernel.op, []).append(kernel.name)
    return kernel


def kernels_for(op: str) -> list[Kernel]:
    """The kernels registered for reference op ``op``, in the order the dispatch tries them."""
    return [KERNELS[name] for name in _by_op.get(op, ())]


@dataclass
class Dispatched:
    """The context :func:`forward` returns: who ran the forward (``runner``) and what it saved (``saved``)."""

    runner: Any  # a Kernel, or the reference's OpSpec
    saved: Any

    __slots__ = ("runner", "saved")

    @property
    def probs(self) -> Any:
        """An attention op's probabilities (B, H, L, S), from whichever implementation ran it (also one that
        ran another through the dispatch, as the float32-statistics kernel does)."""
        return self.saved.probs


def choose(op: str, *args: Any, **kwargs: Any) -> Any:
    """The kernel that would run ``op`` on these arguments, or the reference :class:`~nptransformer.registry.OpSpec`."""
    if op not in OPS:
        raise KeyError(f"no reference op named {op!r}; registered: {sorted(OPS)}")
    if not _reference_only:
        for kernel in kernels_for(op):
            if kernel.name not in _disabled and kernel.applies(*args, **kwargs):
                return kernel
    return OPS[op]


def forward(op: str, *args: Any, **kwargs: Any) -> tuple[Any, Dispatched]:
    """Run op ``op``'s forward through the chosen implementation -> ``(out, ctx)``."""
    runner = choose(op, *args, **kwargs)
    out, saved = runner.forward(*args, **kwargs)
    if _round_results is not None:
        out = _round_results(out)
    return out, Dispatched(runner, saved)


def backward(dout: Any, ctx: Dispatched) -> Any:
    """The backward of whichever implementation ran the forward that returned ``ctx``."""
    if not isinstance(ctx, Dispatched):
        raise TypeError(f"ctx must be the context forward() returned, got {type(ctx).__name__}")
    grads = ctx.runner.backward(dout, ctx.saved)
    return grads if _round_results is None else _round_results(grads)


@contextlib.contextmanager
def intercepted(forward_hook: Callable[..., Any] | None = None,
                backward_hook: Callable[..., Any] | None = None) -> Iterator[None]:
    """Inside the block every op call goes through a hook: ``forward_hook(forward, op, *args, **kwargs)`` and
    ``backward_hook(backward, dout, ctx)`` receive the plain :func:`forward` / :func:`backward` to delegate
    to and return what it returns (None: that direction is left alone). The layers call this module's
    functions by attribute, so they all pass through; the plain functions are back on exit. How the bench
    times each op and reads the shapes of a step's products (:mod:`nptransformer.apps.bench`).
    """
    global forward, backward
    plain_forward, plain_backward = forward, backward

    def hooked_forward(op: str, *args: Any, **kwargs: Any) -> Any:
        return forward_hook(plain_forward, op, *args, **kwargs)

    def hooked_backward(dout: Any, ctx: Any) -> Any:
        return backward_hook(plain_backward, dout, ctx)

    if forward_hook is not None:
        forward = hooked_forward
    if backward_hook is not None:
        backward = hooked_backward
    try:
        yield
    finally:
        forward, backward = plain_forward, plain_backward


@contextlib.contextmanager
def rounded_results(round_fn: Callable[[Any], Any]) -> Iterator[None]:
    """Inside the block every op's result and every gradient passes through ``round_fn``.

    That emulates a narrower number format at each op's boundary while the op
    computes in its input's dtype (:mod:`.bfloat16` rounds float32 results to
    bfloat16 this way). ``round_fn`` takes an op's result (an array, a tuple
    of arrays and None, or a float) and returns it rounded.
    """
    global _round_results
    previous, _round_results = _round_results, round_fn
    try:
        yield
    finally:
        _round_results = previous


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Inside the block every op runs its reference code from :mod:`nptransformer.functional`."""
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous


@contextlib.contextmanager
def configured(settings: dict[str, dict]) -> Iterator[None]:
    """Inside the block the named kernels run with other settings: ``{name: {setting: value}}``.

    ``configured(small_settings())`` makes
    test-sized inputs reach every split and block of every kernel.
    """
    unknown = sorted(set(settings) - set(KERNELS))
    if unknown:
        raise KeyError(f"no kernels named {unknown}; registered: {sorted(KERNELS)}")
    previous = {name: KERNELS[name] for name in settings}
    try:
        for name, values in settings.items():
            KERNELS[name] = previous[name].configured(**values)
        yield
    finally:
        KERNELS.update(previous)


def small_settings() -> dict[str, dict]:
    """Every kernel's ``test_settings``, for :func:`configured`."""
    return {name: kernel.test_settings for name, kernel in KERNELS.items()}


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Inside the block the named kernels never run (the next one that applies, or the reference, does)."""
    unknown = sorted(set(names) - set(KERNELS))
    if unknown:
        raise KeyError(f"no kernels named {unknown}; registered: {sorted(KERNELS)}")
    added = set(names) - _disabled
    _disabled.update(added)
    try:
        yield
    finally:
        _disabled.difference_update(added)
