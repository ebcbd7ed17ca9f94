"""``BatchNorm1d``: batch normalization with running statistics, as ``torch.nn.BatchNorm1d``, channels last.

In training each channel is normalised with the current batch's mean and
variance, and exponential running averages of them are kept; in evaluation
(``model.eval()``) those running averages are used instead, so an output no
longer depends on its batch-mates. The layout is the library's (B, T, C) or
(N, C), channels last; torch's BatchNorm1d takes (N, C, L), channels second,
so ``torch_bn(x.transpose(1, 2)).transpose(1, 2)`` is this layer on (B, T, C).

>>> import numpy as np
>>> bn = BatchNorm1d(2, dtype="float64")
>>> y = bn(np.array([[0.0, 10.0], [2.0, 30.0]]))
>>> y.round(3).tolist(), bn.running_mean.tolist(), bn.running_var.tolist()
([[-1.0, -1.0], [1.0, 1.0]], [0.1, 2.0], [1.1, 20.9])
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..functional.batch_norm import batch_statistics
from ..kernels.ops import batch_norm_backward, batch_norm_forward
from ..registry import ModuleCheck, register_module_check
from .module import Module, Parameter
from .normalization import _accumulate, _data, _ones


class BatchNorm1d(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias per channel. Shapes: x (N, C) or (B, T, C) -> same.

    ``momentum``: the running averages' update, running = (1 - momentum) *
    running + momentum * batch (variance unbiased, as torch), or None for
    the cumulative average of every batch seen. ``track_running_stats=False``
    keeps none and normalises with batch statistics in evaluation too.
    Parameters ``weight``, ``bias`` (C,) when ``affine``; buffers
    ``running_mean``, ``running_var`` (C,) and ``num_batches_tracked``
    (torch's state_dict keys).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = "float32"):
        super().__init__()
        _checks.check_positive_int("num_features", num_features)
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                     or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be a number in [0, 1] or None (cumulative average), got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.track_running_stats = track_running_stats
        self.weight = Parameter(_ones(num_features, dtype)) if affine else None
        self.bias = Parameter(backend.zeros((num_features,), dtype=dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", backend.zeros((num_features,), dtype=dtype))
            self.register_buffer("running_var", _ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", backend.zeros((), dtype="int64"))

    def forward(self, x: Any) -> Any:
        """x (..., C) -> normalised (..., C); in training also updates the running statistics."""
        _checks.check_last_dim("x", x, self.num_features, "num_features")
        use_batch = self.training or not self.track_running_stats
        if use_batch and self.track_running_stats:
            self._update_running_stats(x)
        stats = {} if use_batch else {"running_mean": self.running_mean, "running_var": self.running_var}
        y, ctx = batch_norm_forward(x, _data(self.weight), _data(self.bias), eps=self.eps, **stats)
        self.save_for_backward(ctx)
        return y

    def _update_running_stats(self, x: Any) -> None:
        if x.size < 2 * self.num_features:
            return  # batch_norm_forward refuses it with the reason
        n = x.size // self.num_features
        mean, var = batch_statistics(x)
        self.register_buffer("num_batches_tracked", self.num_batches_tracked + 1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / (n - 1))  # torch keeps the unbiased variance, though it normalises with the biased
        self.register_buffer("running_mean", (1 - m) * self.running_mean + m * mean)
        self.register_buffer("running_var", (1 - m) * self.running_var + m * unbiased)

    def backward(self, dy: Any) -> Any:
        """Adds dweight, dbias; returns dx (docs/ops/batch_norm.md)."""
        dx, dweight, dbias = batch_norm_backward(dy, self.saved(dy))
        _accumulate(self.weight, dweight)
        _accumulate(self.bias, dbias)
        return dx

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}, "
                f"track_running_stats={self.track_running_stats}")


def _check(training: bool) -> Any:
    def build(rng: Any) -> ModuleCheck:
        m = BatchNorm1d(5, dtype="float64")
        m.weight.data = backend.asarray(rng.normal(size=5))
        m.bias.data = backend.asarray(rng.normal(size=5))
        m.register_buffer("running_mean", backend.asarray(rng.normal(size=5)))
        m.register_buffer("running_var", backend.asarray(rng.uniform(0.5, 2.0, size=5)))
        m.train(training)
        return ModuleCheck(m, (rng.normal(size=(4, 3, 5)),))

    return build


register_module_check("BatchNorm1d.train", _check(True))
register_module_check("BatchNorm1d.eval", _check(False))
