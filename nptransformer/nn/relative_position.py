"""``RelativePositionBias``: T5's learned bias per head and per bucket of key - query distance.

One module serves a whole stack: the bias (H, Tq, Tk) is computed once per
forward and added to the scores of every layer's self-attention, so its
``backward`` takes the sum of the layers' gradients (docs/ops/relative_position.md).

>>> import numpy as np
>>> bias = RelativePositionBias(num_buckets=8, num_heads=2, bidirectional=False, max_distance=16)
>>> bias(3, 5).shape                     # (H, Tq, Tk)
(2, 3, 5)
>>> bias(1, 5, offset=4).shape           # one new query at position 4 (decoding with a cache)
(2, 1, 5)
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..functional.relative_position import check_bucket_arguments
from ..kernels.ops import relative_position_bias_backward, relative_position_bias_forward
from ..registry import ModuleCheck, register_module_check
from .module import Module, Parameter


class RelativePositionBias(Module):
    """bias[h, i, j] = weight[bucket(j - (offset + i)), h]; ``weight`` (num_buckets, num_heads).

    ``bidirectional``: encoder buckets (keys on both sides of the query);
    otherwise causal ones. ``max_distance``: distances at least this far share
    the last bucket. Initialised N(0, 1) like an embedding (models re-initialise).
    """

    def __init__(self, num_buckets: int = 32, num_heads: int = 8, bidirectional: bool = True,
                 max_distance: int = 128, dtype: Any = "float32", generator: Any = None):
        super().__init__()
        check_bucket_arguments(num_buckets, max_distance, bidirectional)
        self.num_buckets, self.num_heads = num_buckets, num_heads
        self.bidirectional, self.max_distance = bidirectional, max_distance
        self.weight = Parameter((generator or backend.default_generator).normal((num_buckets, num_heads), dtype=dtype))

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> Any:
        """The bias (H, Tq, Tk) for Tq queries at positions offset.. attending to Tk keys at 0..Tk-1."""
        bias, ctx = relative_position_bias_forward(self.weight.data, query_length, key_length,
                                                   bidirectional=self.bidirectional,
                                                   max_distance=self.max_distance, offset=offset)
        self.save_for_backward(ctx)
        return bias

    def backward(self, dbias: Any) -> None:
        """Scatters dL/dbias (H, Tq, Tk) into ``weight.grad``; the lengths have no gradient."""
        self.weight.accumulate(relative_position_bias_backward(dbias, self.saved(dbias)))
        return None

    def extra_repr(self) -> str:
        kind = "bidirectional" if self.bidirectional else "causal"
        return f"num_buckets={self.num_buckets}, num_heads={self.num_heads}, {kind}, max_distance={self.max_distance}"


def _check(rng: Any) -> ModuleCheck:
    return ModuleCheck(RelativePositionBias(6, 2, bidirectional=True, max_distance=5, dtype="float64"), (),
                       {"query_length": 4, "key_length": 6, "offset": 1}, wrt=())


register_module_check("RelativePositionBias", _check)
