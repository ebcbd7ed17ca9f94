"""Primitive ops: each a ``*_forward`` returning ``(out, ctx)`` and a hand-written ``*_backward``.

Every op is registered in :data:`~nptransformer.functional.registry.OPS`,
which is what puts it under the gradient check.
"""

from .linear import add_backward, add_forward, linear_backward, linear_forward, matmul_backward, matmul_forward
from .registry import OPS, Case, OpSpec, register
from .softmax import log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward"))] + ["OPS", "Case", "OpSpec", "register"]
