"""Scaled dot-product attention: softmax(q k^T * scale + bias + mask) v, with dropout on the weights.

Mask convention (one for all of nptransformer, that of ``torch.nn.MultiheadAttention``):
a BOOLEAN ``attn_mask`` is True where a query is NOT allowed to attend. This is
the opposite of ``torch.nn.functional.scaled_dot_product_attention``, whose
boolean mask is True where attention IS allowed; invert the mask (``~mask``)
when moving code from that function. A FLOAT ``attn_mask`` is added to the
scores (use -inf to forbid a position). A ``bias`` is added like a float mask,
but it is learned (T5's relative positions, ALiBi), so it gets a gradient.

>>> import numpy as np
>>> from nptransformer.functional import scaled_dot_product_attention_forward, scaled_dot_product_attention_backward
>>> q = k = np.zeros((1, 2, 4))                       # (B, T, D): all scores equal
>>> v = np.array([[[1.0], [3.0]]])                    # (B, T, Dv)
>>> out, ctx = scaled_dot_product_attention_forward(q, k, v)
>>> out[0, :, 0].tolist()                             # the mean of v
[2.0, 2.0]
>>> out, ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
>>> out[0, :, 0].tolist(), ctx.probs[0].tolist()     # query 0 sees key 0 only
([1.0, 2.0], [[1.0, 0.0], [0.5, 0.5]])
>>> out, ctx = scaled_dot_product_attention_forward(q, k, v, bias=np.zeros(2))  # one bias per key (Tk,)
>>> dq, dk, dv, dbias = scaled_dot_product_attention_backward(np.ones_like(out), ctx)
>>> dbias.tolist()                                    # more bias on key 1 (v = 3) raises both outputs
[-1.0, 1.0]

Derivation: docs/ops/attention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import dtype_name, get_array_module
from .dropout import dropout_backward, dropout_forward
from .linear import sum_to_shape
from ..registry import Case, register_op
from .softmax import softmax_backward, softmax_forward


@dataclass
class AttentionContext:
    """What the attention backward needs, and the probabilities for attention maps.

    ``q``, ``k`` (for dk and dq), ``v`` (for dW = dout v^T); ``probs`` P
    (..., Tq, Tk) before dropout, the array inside ``softmax_ctx`` (its
    backward needs it, and dropout's backward rebuilds W from it);
    ``dropout_ctx`` (the keep-mask); ``scale``; ``bias_shape``, the shape
    dbias is summed down to (None without a bias).
    """

    q: Any
    k: Any
    v: Any
    probs: Any
    softmax_ctx: Any
    dropout_ctx: Any
    scale: float
    bias_shape: tuple | None


def check_attention_inputs(q: Any, k: Any, v: Any, attn_mask: Any, dropout_p: float, generator: Any,
                           bias: Any) -> None:
    """Raise unless the arguments make one attention call (shapes, dtypes, dropout_p, generator).

    Shared with the attention kernels, so that both raise the same errors.
    """
    for name, a in (("q", q), ("k", k), ("v", v)):
        _checks.check_float(name, a)
        if a.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., T, D), got shape {tuple(a.shape)}")
    _checks.check_same_dtype(q=q, k=k, v=v)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"q, k and v must have the same leading (batch, head) axes, got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k must have last dimension {q.shape[-1]} (q's head dim D), got shape {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"v must have {k.shape[-2]} rows (k's key count Tk), got shape {tuple(v.shape)}")
    _checks.check_probability("dropout_p", dropout_p)
    if generator is not None and not isinstance(generator, backend.Generator):
        raise TypeError(f"generator must be a nptransformer.backend.Generator or None, got {type(generator).__name__}")
    q_dtype = dtype_name(q.dtype)
    if attn_mask is not None:
        _check_scores_shaped("attn_mask", attn_mask, q, k, ("bool", q_dtype),
                             f"bool (True = masked out) or {q_dtype} (added to the scores, like q)")
    if bias is not None:
        _check_scores_shaped("bias", bias, q, k, (q_dtype,), f"{q_dtype} (added to the scores, like q)")


def _check_scores_shaped(name: str, a: Any, q: Any, k: Any, dtypes: tuple, expected: str) -> None:
    """``a`` has one of ``dtypes`` and broadcasts to the scores' shape (..., Tq, Tk)."""
    _checks.check_array(name, a)
    if dtype_name(a.dtype) not in dtypes:
        raise TypeError(f"{name} must be {expected}, got dtype {dtype_name(a.dtype)}")
    scores_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
    try:
        ok = np.broadcast_shapes(tuple(a.shape), scores_shape) == scores_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(a.shape)} does not broadcast to the attention scores' "
                         f"shape (..., Tq, Tk) = {scores_shape}")


def causal_mask(tq: int, tk: int, like: Any) -> Any:
    """(Tq, Tk) boolean, True where key j > query i: the keys a causal query may not see (top-left, as torch)."""
    xp = get_array_module(like)
    i = xp.reshape(backend.arange(tq, like=like), (tq, 1))
    j = xp.reshape(backend.arange(tk, like=like), (1, tk))
    return j > i


def scaled_dot_product_attention_forward(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    generator: Any = None,
    bias: Any = None,
) -> tuple[Any, AttentionContext]:
    """out = dropout(softmax(q k^T * scale + bias + mask)) v.

    Shapes: q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> out (..., Tq, Dv);
    the leading axes (B, H) of q, k and v must be equal.

    - ``attn_mask`` broadcastable to (..., Tq, Tk): bool with True = NOT allowed
      to attend (torch.nn.MultiheadAttention's convention, the opposite of
      torch.nn.functional.scaled_dot_product_attention's), or float of q's dtype
      added to the scores (-inf allowed). A constant: no gradient.
    - ``is_causal``: query i may not attend to key j > i (top-left aligned).
      Unlike torch, it may be combined with ``attn_mask``: both apply.
    - ``scale``: defaults to 1/sqrt(D).
    - ``dropout_p``: inverted dropout on the attention probabilities, drawn
      from ``generator`` (default ``backend.default_generator``); nothing is
      drawn when it is 0.
    - ``bias`` broadcastable to (..., Tq, Tk), q's dtype: added to the scores
      like a float mask, but differentiable (relative-position biases), e.g.
      (H, Tq, Tk) for one per head.

    A query whose keys are all masked gets an all-zero output row (not nan)
    and passes no gradient. Saves q, k, v, the probabilities, the dropout
    mask, the scale and the bias's shape (:class:`AttentionContext`).
    """
    check_attention_inputs(q, k, v, attn_mask, dropout_p, generator, bias)
    xp = get_array_module(q, k, v, attn_mask, bias)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    S = (q @ xp.matrix_transpose(k)) * scale  # (..., Tq, D) @ (..., D, Tk) -> (..., Tq, Tk)
    if bias is not None:
        S = S + bias
    if attn_mask is not None and dtype_name(attn_mask.dtype) == "bool":
        S = xp.where(attn_mask, -math.inf, S)  # True = may not attend: exp(-inf) = 0
    elif attn_mask is not None:
        S = S + attn_mask
    if is_causal:
        S = xp.where(causal_mask(q.shape[-2], k.shape[-2], like=q), -math.inf, S)
    P, softmax_ctx = softmax_forward(S, axis=-1)  # a row of all -inf gives zeros
    W, dropout_ctx = dropout_forward(P, p=dropout_p, generator=generator)  # draws nothing when p == 0
    out = W @ v  # (..., Tq, Tk) @ (..., Tk, Dv) -> (..., Tq, Dv)
    bias_shape = None if bias is None else tuple(bias.shape)
    return out, AttentionContext(q, k, v, P, softmax_ctx, dropout_ctx, scale, bias_shape)


def scaled_dot_product_attention_backward(dout: Any, ctx: AttentionContext) -> tuple[Any, Any, Any, Any]:
    """Gradients (dq, dk, dv, dbias) of out = W v, W = dropout(P), P = softmax(S), S = q k^T * scale + bias + mask:

        dv = W^T dout,   dW = dout v^T,   dP = dW * keep / (1 - p),
        dS = P * (dP - sum_j dP * P)  (softmax backward),
        dbias = dS summed over the axes bias was broadcast along (None without a bias),
        dq = dS k * scale,   dk = dS^T q * scale.

    The mask is a constant, so it has no gradient; masked entries have P = 0,
    hence dS = 0 there, and a fully masked query row passes no gradient at all.
    Derivation: docs/ops/attention.md.
    """
    xp = get_array_module(dout)
    # Dropout is a diagonal linear map, so its backward applied to P rebuilds W (not saved).
    W = dropout_backward(ctx.probs, ctx.dropout_ctx)
    dv = xp.matrix_transpose(W) @ dout  # forward: out = W v, so dv = W^T dout  (..., Tk, Tq) @ (..., Tq, Dv)
    dW = dout @ xp.matrix_transpose(ctx.v)  # and dW = dout v^T  (..., Tq, Dv) @ (..., Dv, Tk) -> (..., Tq, Tk)
    dP = dropout_backward(dW, ctx.dropout_ctx)  # forward: W = P * keep / (1 - p)
    dS = softmax_backward(dP, ctx.softmax_ctx)  # forward: P = softmax(S)
    # forward: S + bias, bias broadcast to (..., Tq, Tk), so dbias = dS summed over its copies
    dbias = None if ctx.bias_shape is None else sum_to_shape(dS, ctx.bias_shape)
    dq = (dS @ ctx.k) * ctx.scale  # forward: S = q k^T * scale, so dq = dS k * scale  (..., Tq, Tk) @ (..., Tk, D)
    dk = (xp.matrix_transpose(dS) @ ctx.q) * ctx.scale  # and dk = dS^T q * scale  (..., Tk, Tq) @ (..., Tq, D)
    return dq, dk, dv, dbias


def _example(rng: Any) -> Case:
    q, k, v = rng.normal(size=(2, 2, 3, 4)), rng.normal(size=(2, 2, 4, 4)), rng.normal(size=(2, 2, 4, 3))
    mask = rng.random(size=(3, 4)) < 0.3
    mask[1] = True  # one fully masked query row
    bias = rng.normal(size=(2, 3, 4))  # (H, Tq, Tk): one bias per head
    # Positional to the end, so that the bias sits at position 8 of ``differentiable``.
    return Case((q, k, v, mask, 0.5, True, None, None, bias))


def attention_cases(t: Any, max_len: int = 5, causal: Any = None, bias: bool = True) -> Any:
    """A hypothesis strategy of attention :class:`Case` s with Tq, Tk <= ``max_len``.

    ``causal``: the strategy is_causal is drawn from (default: either);
    ``bias``: whether a bias may be drawn (False: never, for a kernel that
    takes none). The
    arguments are positional to the end, ``(q, k, v, attn_mask, dropout_p,
    is_causal, scale, generator, bias)``, so that the bias sits at position 8
    of the op's ``differentiable`` and the gradient check sees it.
    """
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=2))  # (), (B,) or (B, H)
        tq, tk = draw(t.sides(1, max_len)), draw(t.sides(1, max_len))
        d, dv = draw(t.sides(1, 4)), draw(t.sides(1, 4))
        # |scores| <= D * scale stays small: a saturated softmax has gradients near the
        # finite-difference noise floor (~1e-10), which would make relative errors meaningless.
        q = draw(t.float_arrays(lead + (tq, d), low=-1.0, high=1.0))
        k = draw(t.float_arrays(lead + (tk, d), low=-1.0, high=1.0))
        v = draw(t.float_arrays(lead + (tk, dv)))
        full = lead + (tq, tk)

        def broadcastable_shape() -> tuple:
            """A suffix of (..., Tq, Tk) with some axes 1; Tq -> 1 is a key-padding mask (or a per-key bias)."""
            start = draw(t.st.integers(0, len(full) - 1))
            return tuple(1 if draw(t.st.booleans()) else n for n in full[start:])

        kind = draw(t.st.sampled_from(["none", "bool", "float"]))
        mask = None
        if kind != "none":
            mask_shape = broadcastable_shape()
            mask = draw(t.bool_masks(mask_shape))  # includes all-True, i.e. fully masked rows
            if kind == "float":
                mask = np.where(mask, -np.inf, draw(t.float_arrays(mask_shape)))
        bias_array = None
        if bias and draw(t.st.booleans()):
            # Whole along the keys: a bias constant along them shifts each softmax row by a constant, which
            # changes nothing, so its gradient is 0 and finite differences would measure only their noise.
            bias_shape = broadcastable_shape()[:-1] + (tk,)
            bias_array = draw(t.float_arrays(bias_shape, low=-1.0, high=1.0))
        dropout_p = draw(t.st.sampled_from([0.0, 0.5]))
        is_causal = draw(causal if causal is not None else t.st.booleans())
        scale = draw(t.st.one_of(t.st.none(), t.st.floats(0.25, 1.0)))
        return Case((q, k, v, mask, dropout_p, is_causal, scale, None, bias_array))

    return cases()


register_op(
    "scaled_dot_product_attention",
    scaled_dot_product_attention_forward,
    scaled_dot_product_attention_backward,
    example=_example,
    cases=attention_cases,
    differentiable=(0, 1, 2, 8),
)
