"""Activation checkpointing: keep a module's inputs instead of its activations, recompute them in backward.

A pre-LN Transformer block saves about 17 arrays of (B, T, C) floats for its
backward (the normalised inputs, q/k/v, the attention probabilities, the
4C-wide MLP activations ...). A checkpointed block keeps only its input:

    forward:   y = block(x) under no_grad        saves x only
    backward:  block(x) again, saving contexts   one extra forward
               dx = block.backward(dy)           as without checkpointing

so the activations of one block are alive at a time, for the price of one
more forward per block (a training step does forward + 2x forward for the
backward, so about a third more work). docs/performance.md measures the
trade-off.

Dropout must draw the same masks the second time, so the state of every
random generator the module can draw from is saved before the forward,
restored for the recomputation, and put back afterwards: the random stream
goes on as if the forward had run once.

>>> import numpy as np
>>> from nptransformer.nn import Linear
>>> layer = Linear(3, 2)
>>> y, ctx = checkpoint_forward(layer, np.ones((4, 3), dtype=np.float32))
>>> checkpoint_backward(np.ones((4, 2), dtype=np.float32), ctx).shape
(4, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import backend
from ..grad_mode import is_grad_enabled, no_grad
from .module import Module


@dataclass
class CheckpointContext:
    """What :func:`checkpoint_backward` needs: the module, its call's arguments, the generators' states."""

    module: Module
    args: tuple
    kwargs: dict
    rng_states: list


def _generators(module: Module) -> list:
    found = {id(backend.default_generator): backend.default_generator}
    for m in module.modules():
        g = getattr(m, "generator", None)
        if isinstance(g, backend.Generator):
            found[id(g)] = g
    return list(found.values())


def checkpoint_forward(module: Module, *args: Any, **kwargs: Any) -> tuple[Any, CheckpointContext]:
    """``module(*args, **kwargs)`` without saving activations; returns (output, context for the backward).

    The arguments themselves are kept (the caller must not modify them in
    place before the backward), and nothing else.
    """
    rng_states = [(g, g.state()) for g in _generators(module)]
    with no_grad():
        out = module(*args, **kwargs)
    return out, CheckpointContext(module, args, kwargs, rng_states)


def checkpoint_backward(dout: Any, ctx: CheckpointContext) -> Any:
    """Re-run the forward (now saving contexts, with the forward's random state), then ``module.backward(dout)``."""
    if not is_grad_enabled():
        raise RuntimeError("checkpoint_backward recomputes the forward and needs gradients enabled: "
                           "call it outside no_grad()")
    current = [(g, g.state()) for g, _ in ctx.rng_states]
    for g, state in ctx.rng_states:
        g.set_state(state)
    try:
        ctx.module(*ctx.args, **ctx.kwargs)
    finally:
        for g, state in current:
            g.set_state(state)
    return ctx.module.backward(dout)
