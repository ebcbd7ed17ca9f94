"""``MixtureOfExperts``: a feed-forward sublayer of E experts, each token sent to its top-k by a learned router.

    p = softmax(x W_r^T)                      # (N, C) -> (N, E) router probabilities
    S = the k largest p of each token         # (N, E) 0/1, not differentiable
    g = p * S   (or p * S / sum(p * S))       # gates of the selected experts
    y = sum_e g[:, e] * expert_e(x)           # each expert runs on its own tokens only

An expert is a :class:`~nptransformer.nn.FeedForward`, so parameters grow
with E while the work per token stays that of k experts. The router learns
through the gates of the experts it selected (their outputs weigh in y)
and through the load-balancing loss of the Switch Transformer,

    aux = E * sum_e f_e * P_e,  f_e = share of the N k assignments given to e,  P_e = mean_n p[n, e],

which is 1 when routing is uniform and E when every token goes to one
expert. :meth:`MixtureOfExperts.backward` adds ``aux_loss_weight`` times
its gradient into the router, so training minimises task loss +
aux_loss_weight * aux with no change to the loop; :func:`load_balancing_loss`
gives that extra term's value, to add to a logged loss. There is no
capacity limit: every token reaches its k experts.

>>> import numpy as np
>>> moe = MixtureOfExperts(4, 8, num_experts=4, top_k=2)
>>> moe(np.ones((2, 3, 4), dtype=np.float32)).shape
(2, 3, 4)
>>> moe.num_parameters() - moe.num_active_parameters() == 2 * moe.experts[0].num_parameters()
True
"""

from __future__ import annotations

import math
from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..kernels.ops import softmax_backward, softmax_forward
from ..registry import ModuleCheck, register_module_check
from .feed_forward import FeedForward
from .linear import Linear
from .module import Module, ModuleList


class MixtureOfExperts(Module):
    """Top-k routed feed-forward experts. Shapes: x (..., d_model) -> (..., d_model), e.g. (B, T, C).

    ``num_experts`` experts ``FeedForward(d_model, dim_feedforward, dropout,
    activation)``, a ``router`` Linear (num_experts, d_model) without bias,
    ``top_k`` experts per token. ``renormalize``: the selected gates are
    rescaled to sum to 1 (Mixtral); by default they are the router's
    probabilities (Switch Transformer), which keeps a gradient for the
    router even with top_k = 1. ``aux_loss_weight``: the weight of the
    load-balancing loss in the objective (0 turns it off). After each
    forward, ``aux_loss`` (float) and ``tokens_per_expert`` (list of E ints).
    """

    def __init__(self, d_model: int, dim_feedforward: int, num_experts: int, top_k: int = 2, dropout: float = 0.0,
                 activation: Any = "gelu_tanh", bias: bool = True, renormalize: bool = False,
                 aux_loss_weight: float = 0.01, dtype: Any = "float32"):
        super().__init__()
        _checks.check_positive_int("num_experts", num_experts)
        _checks.check_positive_int("top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"top_k must be at most num_experts={num_experts}, got {top_k}")
        if (isinstance(aux_loss_weight, bool) or not isinstance(aux_loss_weight, (int, float))
                or not math.isfinite(aux_loss_weight) or aux_loss_weight < 0):
            raise ValueError(f"aux_loss_weight must be a finite number >= 0, got {aux_loss_weight!r}")
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, bool(renormalize)
        self.aux_loss_weight = float(aux_loss_weight)
        self.router = Linear(d_model, num_experts, bias=False, dtype=dtype)
        self.experts = ModuleList([FeedForward(d_model, dim_feedforward, dropout, activation, bias=bias, dtype=dtype)
                                   for _ in range(num_experts)])
        self.aux_loss: float | None = None
        self.tokens_per_expert: list[int] | None = None

    def forward(self, x: Any) -> Any:
        """x (..., d_model) -> (..., d_model); sets ``aux_loss`` and ``tokens_per_expert``."""
        _checks.check_float("x", x)
        _checks.check_last_dim("x", x, self.router.weight.shape[1], "d_model")
        xp = get_array_module(x)
        shape, C, E = tuple(x.shape), x.shape[-1], self.num_experts
        flat = xp.reshape(x, (-1, C))  # (N, C)
        N = flat.shape[0]
        p, softmax_ctx = softmax_forward(self.router(flat))  # (N, E)
        top = xp.argsort(-p, axis=-1)[:, :self.top_k]  # (N, k) expert ids, best first
        ids = xp.reshape(backend.arange(E, like=top), (1, E))
        sel = sum(xp.astype(top[:, j:j + 1] == ids, p.dtype) for j in range(self.top_k))  # (N, E) 0/1
        q = p * sel
        q_sum = xp.sum(q, axis=-1, keepdims=True)
        gates = q / q_sum if self.renormalize else q
        y = backend.zeros((N, C), dtype=x.dtype, like=x)
        routed = []  # (expert index, its token rows, its output) for the experts that got tokens
        for e, expert in enumerate(self.experts):
            rows = xp.nonzero(sel[:, e] > 0)[0]
            if rows.shape[0] == 0:
                continue  # an idle expert runs nothing, so its backward must not run either
            h = expert(xp.take(flat, rows, axis=0))  # (n_e, C)
            backend.scatter_add(y, rows, h * xp.reshape(xp.take(gates[:, e], rows, axis=0), (-1, 1)))
            routed.append((e, rows, h))
        counts = xp.sum(sel, axis=0)  # (E,)
        share = counts / (N * self.top_k)  # f_e: constant in the gradient (counts of a discrete choice)
        self.aux_loss = float(E * xp.sum(share * xp.mean(p, axis=0)))
        self.tokens_per_expert = [int(c) for c in backend.to_numpy(counts)]
        self.save_for_backward((softmax_ctx, sel, gates, q_sum, share, routed, shape))
        return xp.reshape(y, shape)

    def backward(self, dy: Any) -> Any:
        """dL/dy (..., d_model) -> dL/dx; adds the experts', the router's and the aux loss's gradients."""
        softmax_ctx, sel, gates, q_sum, share, routed, shape = self.saved(dy)
        xp = get_array_module(dy)
        N, C, E = sel.shape[0], shape[-1], self.num_experts
        dflat = xp.reshape(dy, (N, C))
        dx = backend.zeros((N, C), dtype=dy.dtype, like=dy)
        dgate_cols = [backend.zeros((N, 1), dtype=dy.dtype, like=dy) for _ in range(E)]
        for e, rows, h in reversed(routed):
            d_rows = xp.take(dflat, rows, axis=0)  # forward: y[rows] += gate * h
            gate = xp.reshape(xp.take(gates[:, e], rows, axis=0), (-1, 1))
            backend.scatter_add(dgate_cols[e], rows, xp.sum(d_rows * h, axis=-1, keepdims=True))  # d gate
            dh = self.experts[e].backward(d_rows * gate)  # forward: h = expert_e(x[rows])
            backend.scatter_add(dx, rows, dh)  # forward: x[rows] gathered
        dgates = xp.concat(dgate_cols, axis=1)  # (N, E), zero off the selected experts
        if self.renormalize:  # forward: gates = q / sum(q)
            dgates = (dgates - xp.sum(dgates * gates, axis=-1, keepdims=True)) / q_sum
        dp = dgates * sel  # forward: q = p * S
        if self.aux_loss_weight:
            dp = dp + (self.aux_loss_weight * E / N) * share  # forward: aux = E * sum(f * mean_n(p))
        dlogits = softmax_backward(dp, softmax_ctx)  # forward: p = softmax(logits)
        dx = dx + self.router.backward(dlogits)  # forward: logits = x W_r^T
        return xp.reshape(dx, shape)

    def num_active_parameters(self) -> int:
        """Parameters a token passes through: the router and top_k experts."""
        return self.router.num_parameters() + self.top_k * self.experts[0].num_parameters()

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, top_k={self.top_k}, renormalize={self.renormalize}, "
                f"aux_loss_weight={self.aux_loss_weight}")


def load_balancing_loss(model: Module) -> float:
    """sum of aux_loss_weight * aux_loss over the model's MixtureOfExperts layers, after a forward.

    Their backward already adds this term's gradient; add the value to the
    task loss to report the objective being minimised.
    """
    return sum(m.aux_loss_weight * m.aux_loss for m in model.modules()
               if isinstance(m, MixtureOfExperts) and m.aux_loss is not None)


class _WithAuxLoss(Module):
    """Checks the aux gradient: output = (y flattened, aux); the upstream gradient of aux is its weight."""

    def __init__(self, moe: MixtureOfExperts):
        super().__init__()
        self.moe = moe

    def forward(self, x: Any) -> Any:
        y = self.moe(x)
        xp = get_array_module(y)
        self.save_for_backward(tuple(y.shape))
        return xp.concat([xp.reshape(y, (-1,)), backend.asarray([self.moe.aux_loss], dtype=y.dtype)])

    def backward(self, dout: Any) -> Any:
        shape = self.saved(dout)
        self.moe.aux_loss_weight = float(dout[-1])
        return self.moe.backward(get_array_module(dout).reshape(dout[:-1], shape))


def _check(top_k: int, renormalize: bool, with_aux: bool) -> Any:
    def build(rng: Any) -> ModuleCheck:
        moe = MixtureOfExperts(4, 6, num_experts=3, top_k=top_k, dropout=0.2, renormalize=renormalize,
                               aux_loss_weight=0.0, dtype="float64")
        for p in moe.parameters():
            p.data = backend.asarray(rng.normal(size=p.shape))  # router logits O(1): no near-ties
        x = rng.normal(size=(2, 5, 4))
        return ModuleCheck(_WithAuxLoss(moe) if with_aux else moe, (x,))

    return build


register_module_check("MixtureOfExperts.top2", _check(2, False, False))
register_module_check("MixtureOfExperts.top1_aux", _check(1, False, True))
register_module_check("MixtureOfExperts.top2_renormalized_aux", _check(2, True, True))
