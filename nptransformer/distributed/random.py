"""Random streams per rank and per step, so a parallel run is reproducible and resumable at any world size.

The dropout masks of step ``s`` on rank ``r`` come from a generator seeded
with ``(seed, r, s)``: nothing about them has to be saved in a checkpoint
(the step is), two runs with the same seed and world size draw the same
masks, and a run resumed at another world size re-derives its streams from
the step it resumes at. Streams that must agree across ranks (the
replicated activations of tensor parallelism) are seeded with
``(seed, s)`` alone.

>>> a = step_generator(0, step=3, rank=1).uniform((2,))
>>> bool((a == step_generator(0, step=3, rank=1).uniform((2,))).all())
True
>>> bool((a == step_generator(0, step=3, rank=0).uniform((2,))).any())
False
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import Generator


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0])


def step_generator(seed: int, step: int, rank: int | None = None) -> Generator:
    """A generator for ``step``: one stream per ``rank``, or one shared by all ranks with ``rank=None``."""
    words = (seed, step) if rank is None else (seed, step, rank, 1)
    return Generator(_seed(*words))


def seed_default_generator(seed: int, step: int, rank: int | None = None) -> None:
    """Point :data:`backend.default_generator` (dropout's default) at :func:`step_generator`'s stream."""
    backend.default_generator.set_state(step_generator(seed, step, rank).state())
