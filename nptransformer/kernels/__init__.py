"""THE ENGINE: fast variants of the reference ops, each registered against the op it implements.

The reference (:mod:`nptransformer.functional`) is the textbook; the kernels
here compute the same numbers faster on a CPU: GEMMs split over the pool's
threads, elementwise chains evaluated in cache-sized row blocks, the
feed-forward's linear and activation fused, causal attention in query
blocks. Layers call :mod:`.ops`, whose dispatch runs the first kernel that
is enabled and applies (:mod:`.dispatch`), else the reference. The test
suite checks every kernel against its reference op (values and every
gradient) and against finite differences.

- :data:`KERNELS`, :func:`register_kernel`, :class:`Kernel`: the registry.
- :func:`reference_only`, :func:`disabled`: run the textbook code, or leave kernels out.
- :func:`configured`, :func:`small_settings`: other block sizes and split thresholds for a block of code.
- :func:`choose`: which implementation would run an op on given arguments.
"""

from .. import functional  # noqa: F401  (the reference ops register first: every kernel names one)
from . import half_statistics  # noqa: F401  (first: float16 inputs go to float32 before any other kernel)
from . import tiled_attention  # noqa: F401  (before .attention: the dispatch tries it first, for long key rows)
from . import keys_major_attention  # noqa: F401  (before .attention: unmasked attention, blocked takes the rest)
from . import activations, attention, cross_entropy, dropout, linear, linear_activation, normalization, softmax  # noqa: F401
from .dispatch import (KERNELS, Dispatched, Kernel, choose, configured, disabled, kernels_for, reference_only,
                       register_kernel, small_settings)

__all__ = ["KERNELS", "Kernel", "Dispatched", "register_kernel", "kernels_for", "choose", "reference_only",
           "disabled", "configured", "small_settings"]
