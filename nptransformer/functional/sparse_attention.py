"""Sliding-window attention with global tokens (Longformer / BigBird), computed block-sparsely.

Query i attends key j when ``|i - j| <= window`` (with ``is_causal``:
``0 <= i - j <= window``), or when j is one of the first ``global_tokens``
positions, or when i is: a global token sees, and is seen by, every
position. That is dense attention under :func:`sliding_window_mask`, but no
score outside the pattern is ever formed: the queries come in blocks of
``window + 1``, and a block multiplies only the global keys and the band of
keys its window reaches, ``(..., window + 1, global + 3 window + 1)``
scores per block. Cost and memory are linear in T for a fixed window.
With ``random_blocks`` (BigBird) each query block also meets that many
whole key blocks drawn outside its band.

>>> import numpy as np
>>> from nptransformer.functional import scaled_dot_product_attention_forward
>>> sliding_window_mask(5, window=1, global_tokens=1).astype(int)   # True (1) = may not attend
array([[0, 0, 0, 0, 0],
       [0, 0, 0, 1, 1],
       [0, 0, 0, 0, 1],
       [0, 1, 0, 0, 0],
       [0, 1, 1, 0, 0]])
>>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 9, 4))      # (B, T, D)
>>> out, ctx = sliding_window_attention_forward(q, k, v, window=2, global_tokens=1)
>>> dense, _ = scaled_dot_product_attention_forward(q, k, v, sliding_window_mask(9, 2, 1))
>>> bool(np.allclose(out, dense, rtol=1e-12, atol=1e-14))
True

Derivation: docs/ops/sparse_attention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import get_array_module
from ..registry import Case, register_op
from .softmax import softmax_backward, softmax_forward


@dataclass
class SparseBlock:
    """One query block: its ``rows`` (start, stop), the key ``ranges`` [(start, stop, random), ...] it meets,
    in order (the global keys, its random blocks, its band), which of those keys each row may attend
    (``allowed``, (r, keys) bool), and the softmax context."""

    rows: tuple[int, int]
    ranges: list
    allowed: Any
    softmax_ctx: Any


@dataclass
class SparseAttentionContext:
    """q, k, v, the scale and the blocks (:class:`SparseBlock`), for the backward."""

    q: Any
    k: Any
    v: Any
    scale: float
    blocks: list

    def dense_mask(self) -> np.ndarray:
        """(T, T) NumPy boolean, True where a query did NOT attend a key: the dense equivalent of this call,
        random blocks included. O(T²): for tests and teaching."""
        t = self.q.shape[-2]
        mask = np.ones((t, t), dtype=bool)
        for b in self.blocks:
            keys = np.concatenate([np.arange(start, stop) for start, stop, _ in b.ranges])
            mask[b.rows[0]:b.rows[1], keys] = ~backend.to_numpy(b.allowed)
        return mask


def sliding_window_mask(t: int, window: int, global_tokens: int = 0, is_causal: bool = False, like: Any = None) -> Any:
    """(T, T) boolean, True where query i may NOT attend key j under the pattern (the attention mask convention).

    The dense equivalent of :func:`sliding_window_attention_forward`, for
    testing it and for teaching; O(T²), so not for long sequences.
    """
    like = backend.zeros((1,)) if like is None else like
    xp = get_array_module(like)
    i = xp.reshape(backend.arange(t, like=like), (t, 1))
    j = xp.reshape(backend.arange(t, like=like), (1, t))
    return ~_allowed(xp, i, j, window, global_tokens, is_causal)


def _allowed(xp: Any, i: Any, j: Any, window: int, global_tokens: int, is_causal: bool) -> Any:
    """Whether query position i may attend key position j (broadcasting index arrays)."""
    near = (j - i <= window) & (i - j <= window)
    allowed = near | (j < global_tokens) | (i < global_tokens)
    return allowed & (j <= i) if is_causal else allowed


def _check(q: Any, k: Any, v: Any, window: int, global_tokens: int) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        _checks.check_float(name, a)
        if a.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., T, D), got shape {tuple(a.shape)}")
    _checks.check_same_dtype(q=q, k=k, v=v)
    if not (q.shape[:-1] == k.shape[:-1] == v.shape[:-1]) or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k and v must be (..., T, D), (..., T, D) and (..., T, Dv) with the same T and "
                         f"leading axes (self-attention), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    check_pattern(window, global_tokens)


def check_pattern(window: Any, global_tokens: Any) -> None:
    """Raise unless ``window`` and ``global_tokens`` are integers >= 0 (shared with the layer, to fail early)."""
    for name, n in (("window", window), ("global_tokens", global_tokens)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {n!r}")


def _blocks(t: int, window: int, global_tokens: int, is_causal: bool, random_blocks: int,
            seed: int) -> list[tuple[tuple[int, int], list]]:
    """[((row start, stop), [key ranges]), ...]: the global queries first, then blocks of window + 1 queries,
    each meeting the global keys, ``random_blocks`` key blocks drawn outside its band (only earlier
    ones when causal) and its band."""
    g = min(global_tokens, t)
    blocks = [((0, g), [(0, t, False)])] if g else []  # a global query meets every key
    size = window + 1
    starts = list(range(g, t, size))  # the key blocks are the query blocks' positions
    rng = np.random.default_rng(seed) if random_blocks else None
    for r0 in starts:
        r1 = min(r0 + size, t)
        band = (max(r0 - window, g), r1 if is_causal else min(r1 + window, t))
        outside = [c for c in starts if min(c + size, t) <= band[0] or (not is_causal and c >= band[1])]
        chosen = sorted(rng.choice(outside, min(random_blocks, len(outside)), replace=False)) if outside and rng else []
        ranges = [(0, g, False)] + [(int(c), min(int(c) + size, t), True) for c in chosen] + [band + (False,)]
        blocks.append(((r0, r1), [r for r in ranges if r[1] > r[0]]))
    return blocks


def _gather(xp: Any, a: Any, ranges: list) -> Any:
    """The rows of k (or v) a block meets, range after range, (..., keys, D)."""
    parts = [a[..., start:stop, :] for start, stop, _ in ranges]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)


def sliding_window_attention_forward(q: Any, k: Any, v: Any, window: int, global_tokens: int = 0,
                                     is_causal: bool = False, scale: float | None = None, random_blocks: int = 0,
                                     seed: int = 0) -> tuple[Any, Any]:
    """out = softmax(q k^T * scale, restricted to the pattern) v, block by block.

    Shapes: q, k (..., T, D), v (..., T, Dv) -> out (..., T, Dv): self-attention,
    one T. ``window`` >= 0 keys on each side (only before, with ``is_causal``);
    ``global_tokens``: the first positions, which attend and are attended by
    all; ``scale`` defaults to 1/sqrt(D). ``random_blocks`` (BigBird): each
    block of window + 1 queries also attends that many whole key blocks of
    the same size, drawn from those outside its band (earlier ones when
    causal) by a generator seeded with ``seed``, the same for every batch
    and head, so one seed gives one pattern (``ctx.dense_mask()`` shows it).
    Saves q, k, v and one softmax context per block,
    (..., window + 1, global + (3 + random_blocks)(window + 1)) at most.
    """
    _check(q, k, v, window, global_tokens)
    for name, n in (("random_blocks", random_blocks), ("seed", seed)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
    xp = get_array_module(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    t = q.shape[-2]
    blocks, outs = [], []
    for (r0, r1), ranges in _blocks(t, window, global_tokens, is_causal, random_blocks, seed):
        S = (q[..., r0:r1, :] @ xp.matrix_transpose(_gather(xp, k, ranges))) * scale  # (..., r, keys)
        i = xp.reshape(backend.arange(r1 - r0, like=q) + r0, (r1 - r0, 1))
        j = xp.reshape(xp.concat([backend.arange(b - a, like=q) + a for a, b, _ in ranges]), (1, -1))
        # A random block is attended whole (when causal it lies before every query of the block).
        whole = xp.reshape(xp.concat([backend.full((b - a,), r, dtype="bool", like=q) for a, b, r in ranges]), (1, -1))
        allowed = _allowed(xp, i, j, window, global_tokens, is_causal) | whole
        S = xp.where(allowed, S, -math.inf)
        P, softmax_ctx = softmax_forward(S, axis=-1)  # every query sees itself: no empty row
        outs.append(P @ _gather(xp, v, ranges))  # (..., r, keys) @ (..., keys, Dv)
        blocks.append(SparseBlock((r0, r1), ranges, allowed, softmax_ctx))
    out = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)
    return out, SparseAttentionContext(q, k, v, scale, blocks)


def sliding_window_attention_backward(dout: Any, ctx: SparseAttentionContext) -> tuple[Any, Any, Any]:
    """Gradients (dq, dk, dv), block by block, as dense attention's (docs/ops/attention.md) on each block:

        dV_b = P_b^T dout_b,   dP_b = dout_b V_b^T,   dS_b = P_b * (dP_b - rowsum(dP_b * P_b)),
        dq_b = dS_b K_b * scale,   dK_b = dS_b^T q_b * scale,

    where K_b, V_b are the keys and values the block meets (the global ones, its
    random blocks, its band); dK_b and dV_b are added back into the rows they
    were gathered from. Derivation: docs/ops/sparse_attention.md.
    """
    xp = get_array_module(dout)
    dq_parts, dk, dv = [], xp.zeros_like(ctx.k), xp.zeros_like(ctx.v)
    for b in ctx.blocks:
        (r0, r1), ranges = b.rows, b.ranges
        d = dout[..., r0:r1, :]
        P = b.softmax_ctx[0]  # softmax saves its output, the probabilities
        dV = xp.matrix_transpose(P) @ d  # forward: out_b = P_b V_b
        dP = d @ xp.matrix_transpose(_gather(xp, ctx.v, ranges))  # and dP_b = dout_b V_b^T
        dS = softmax_backward(dP, b.softmax_ctx)  # forward: P_b = softmax(S_b)
        dq_parts.append((dS @ _gather(xp, ctx.k, ranges)) * ctx.scale)  # forward: S_b = q_b K_b^T * scale
        dK = (xp.matrix_transpose(dS) @ ctx.q[..., r0:r1, :]) * ctx.scale
        # forward: K_b = concat of k's ranges, so each range's rows of dK_b go back to its rows of dk
        at = 0
        for start, stop, _ in ranges:
            dk[..., start:stop, :] += dK[..., at:at + stop - start, :]
            dv[..., start:stop, :] += dV[..., at:at + stop - start, :]
            at += stop - start
    dq = dq_parts[0] if len(dq_parts) == 1 else xp.concat(dq_parts, axis=-2)
    return dq, dk, dv

def _example(rng: Any) -> Case:
    q, k, v = rng.normal(size=(2, 2, 9, 4)), rng.normal(size=(2, 2, 9, 4)), rng.normal(size=(2, 2, 9, 3))
    return Case((q, k, v), {"window": 1, "global_tokens": 1, "random_blocks": 1})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=2))
        n, d, dv = draw(t.sides(1, 9)), draw(t.sides(1, 4)), draw(t.sides(1, 4))
        # Scores stay small (see attention_cases): a saturated softmax drowns its gradient in FD noise.
        q = draw(t.float_arrays(lead + (n, d), low=-1.0, high=1.0))
        k = draw(t.float_arrays(lead + (n, d), low=-1.0, high=1.0))
        v = draw(t.float_arrays(lead + (n, dv)))
        kwargs = {"window": draw(t.st.integers(0, 3)), "global_tokens": draw(t.st.integers(0, 2)),
                  "is_causal": draw(t.st.booleans()), "scale": draw(t.st.one_of(t.st.none(), t.st.floats(0.25, 1.0))),
                  "random_blocks": draw(t.st.integers(0, 2)), "seed": draw(t.st.integers(0, 3))}
        return Case((q, k, v), kwargs)

    return cases()


register_op(
    "sliding_window_attention",
    sliding_window_attention_forward,
    sliding_window_attention_backward,
    example=_example,
    cases=_cases,
    differentiable=(0, 1, 2),
)
