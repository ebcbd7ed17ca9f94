"""Linear (kernelized) attention: out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j)).

Softmax's exp(q . k) is replaced by a feature-map product phi(q) . phi(k)
(Katharopoulos et al., 2020), so the sum over keys can be taken once,
``S = phi(K)^T V`` (D' x Dv) and ``z = phi(K)^T 1`` (D'), and each query reads
it: O(T D' Dv) instead of O(T² D). Two feature maps:

- ``"elu"``: phi(x) = elu(x) + 1 > 0 (a different attention from softmax's);
- ``"favor"``: Performer's positive random features (Choromanski et al.,
  2021), phi(x) = exp(W x' - |x'|²/2) / sqrt(m) with x' = x / D^{1/4} and the
  m rows of ``features`` W drawn N(0, I) (:func:`favor_features`); then
  E[phi(q) . phi(k)] = exp(q . k / sqrt(D)), so it approximates softmax
  attention, better as m grows.

With ``is_causal`` query i sums keys j <= i only: the sums become prefix
sums, taken chunk by chunk (within a chunk a small masked (C, C) product,
across chunks the running S and z). Only the running state at each chunk's
start is saved, (T / C, D', Dv), never the (T, D', Dv) prefix states.

>>> import numpy as np
>>> q, k, v = np.zeros((3, 2)), np.zeros((3, 2)), np.array([[1.0], [2.0], [6.0]])
>>> out, ctx = linear_attention_forward(q, k, v, is_causal=True)   # equal features: prefix means
>>> out[:, 0].tolist()
[1.0, 1.5, 3.0]

Derivation: docs/ops/linear_attention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks, backend
from ..backend import get_array_module
from ..registry import Case, register_op

FEATURE_MAPS = ("elu", "favor")


@dataclass
class LinearAttentionContext:
    """q, k, v, the feature map's outputs phi(q), phi(k) (T x D'), out, the denominators z_i (..., T, 1),
    the chunk starts' running states (causal only) and what the feature map needs for its backward."""

    q: Any
    k: Any
    v: Any
    fq: Any
    fk: Any
    out: Any
    den: Any
    states: list | None
    chunk: int
    feature_map: str
    features: Any


def favor_features(m: int, d: int, generator: Any = None, dtype: Any = "float64", like: Any = None) -> Any:
    """(m, D) Gaussian random features for ``feature_map="favor"``, drawn from ``generator`` (default generator)."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (the number of random features) must be an integer >= 1, got {m!r}")
    return (backend.default_generator if generator is None else generator).normal((m, d), dtype=dtype, like=like)


def _phi(x: Any, feature_map: str, features: Any) -> Any:
    xp = get_array_module(x)
    if feature_map == "elu":
        return xp.where(x > 0, x + 1.0, xp.exp(xp.where(x > 0, xp.zeros_like(x), x)))  # elu(x) + 1
    xs = x * x.shape[-1] ** -0.25
    proj = xs @ xp.matrix_transpose(features)  # (..., T, D) @ (D, m)
    return xp.exp(proj - xp.sum(xs * xs, axis=-1, keepdims=True) / 2) / math.sqrt(features.shape[0])


def _phi_backward(dphi: Any, x: Any, phi: Any, feature_map: str, features: Any) -> Any:
    xp = get_array_module(x)
    if feature_map == "elu":
        return xp.where(x > 0, dphi, dphi * phi)  # forward: phi = x + 1 (x > 0), exp(x) (x <= 0)
    c = x.shape[-1] ** -0.25
    g = dphi * phi  # forward: phi = exp(xs W^T - |xs|²/2) / sqrt(m)
    dxs = g @ features - (x * c) * xp.sum(g, axis=-1, keepdims=True)  # and xs = x * c
    return dxs * c


def _check(q: Any, k: Any, v: Any, is_causal: bool, feature_map: str, features: Any, chunk: int) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        _checks.check_float(name, a)
        if a.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., T, D), got shape {tuple(a.shape)}")
    _checks.check_same_dtype(q=q, k=k, v=v)
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v must be (..., Tq, D), (..., Tk, D), (..., Tk, Dv), got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"is_causal needs Tq == Tk, got {q.shape[-2]} queries and {k.shape[-2]} keys")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if feature_map == "favor":
        if features is not None:
            _checks.check_float("features", features)
        if features is None or features.ndim != 2 or features.shape[1] != q.shape[-1]:
            raise ValueError(f"feature_map='favor' needs features of shape (m, {q.shape[-1]}) (favor_features), "
                             f"got {None if features is None else tuple(features.shape)}")
        _checks.check_same_dtype(q=q, features=features)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")


def _tril(n: int, like: Any) -> Any:
    """(n, n) float, 1 where key j <= query i within a chunk."""
    xp = get_array_module(like)
    i = backend.arange(n, like=like)
    return xp.astype(xp.expand_dims(i, axis=-1) >= xp.expand_dims(i, axis=0), like.dtype)


def linear_attention_forward(q: Any, k: Any, v: Any, is_causal: bool = False, feature_map: str = "elu",
                             features: Any = None, chunk: int = 64) -> tuple[Any, LinearAttentionContext]:
    """out (..., Tq, Dv) from q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv): the module docstring's formula.

    ``feature_map``: "elu" or "favor" (then ``features`` (m, D), from
    :func:`favor_features`, a constant); ``chunk``: the causal prefix sums'
    block length (a cost/memory trade-off only: the result does not depend on it).
    """
    _check(q, k, v, is_causal, feature_map, features, chunk)
    xp = get_array_module(q, k, v)
    fq, fk = _phi(q, feature_map, features), _phi(k, feature_map, features)  # (..., T, D')
    if not is_causal:
        S = xp.matrix_transpose(fk) @ v  # (..., D', Tk) @ (..., Tk, Dv): every key at once
        z = xp.sum(fk, axis=-2, keepdims=True)  # (..., 1, D')
        num, den = fq @ S, xp.sum(fq * z, axis=-1, keepdims=True)
        out = num / den
        return out, LinearAttentionContext(q, k, v, fq, fk, out, den, None, chunk, feature_map, features)
    S = backend.zeros(tuple(fk.shape[:-2]) + (fk.shape[-1], v.shape[-1]), like=q)
    z = backend.zeros(tuple(fk.shape[:-2]) + (1, fk.shape[-1]), like=q)
    states, nums, dens = [], [], []
    for c0 in range(0, q.shape[-2], chunk):
        c1 = min(c0 + chunk, q.shape[-2])
        a = (fq[..., c0:c1, :] @ xp.matrix_transpose(fk[..., c0:c1, :])) * _tril(c1 - c0, q)  # (..., C, C)
        nums.append(fq[..., c0:c1, :] @ S + a @ v[..., c0:c1, :])
        dens.append(xp.sum(fq[..., c0:c1, :] * z, axis=-1, keepdims=True) + xp.sum(a, axis=-1, keepdims=True))
        states.append((S, z))
        S = S + xp.matrix_transpose(fk[..., c0:c1, :]) @ v[..., c0:c1, :]
        z = z + xp.sum(fk[..., c0:c1, :], axis=-2, keepdims=True)
    num, den = xp.concat(nums, axis=-2), xp.concat(dens, axis=-2)
    out = num / den
    return out, LinearAttentionContext(q, k, v, fq, fk, out, den, states, chunk, feature_map, features)


def linear_attention_backward(dout: Any, ctx: LinearAttentionContext) -> tuple[Any, Any, Any]:
    """Gradients (dq, dk, dv) of out = num / den, num_i = phi(q_i) S_i, den_i = phi(q_i) . z_i:

        dnum = dout / den,   dden = -rowsum(dout * out) / den,
        non-causal: dphi(q) = dnum S^T + dden z^T,  dS = phi(q)^T dnum,  dz = phi(q)^T dden,
                    dphi(k) = v dS^T + dz,  dv = phi(k) dS;
        causal: the same per chunk with the state at its start, plus the masked
                (C, C) product's terms; dS, dz summed over the later chunks;
        then dq, dk through the feature map's derivative.

    Derivation: docs/ops/linear_attention.md.
    """
    xp = get_array_module(dout)
    fq, fk, v = ctx.fq, ctx.fk, ctx.v
    dnum = dout / ctx.den  # forward: out = num / den
    dden = -xp.sum(dout * ctx.out, axis=-1, keepdims=True) / ctx.den
    if ctx.states is None:
        S = xp.matrix_transpose(fk) @ v
        z = xp.sum(fk, axis=-2, keepdims=True)
        dfq = dnum @ xp.matrix_transpose(S) + dden * z  # forward: num = fq S, den = fq . z
        dS = xp.matrix_transpose(fq) @ dnum
        dz = xp.sum(fq * dden, axis=-2, keepdims=True)
        dfk = v @ xp.matrix_transpose(dS) + dz  # forward: S = fk^T v, z = sum_j fk_j
        dv = fk @ dS
    else:
        dS = xp.zeros_like(ctx.states[0][0])
        dz = xp.zeros_like(ctx.states[0][1])
        dfq_parts, dfk_parts, dv_parts = [], [], []
        starts = list(range(0, fq.shape[-2], ctx.chunk))
        for c0, (S, z) in zip(reversed(starts), reversed(ctx.states)):  # later chunks first: dS, dz accumulate
            c1 = min(c0 + ctx.chunk, fq.shape[-2])
            mask = _tril(c1 - c0, fq)
            fqc, fkc, vc, dn, dd = (a[..., c0:c1, :] for a in (fq, fk, v, dnum, dden))
            # forward: a = (fq fk^T) * mask; num += a v, den += rowsum(a)
            da = (dn @ xp.matrix_transpose(vc) + dd) * mask
            dfq_parts.insert(0, dn @ xp.matrix_transpose(S) + dd * z + da @ fkc)  # and num = fq S_start + ...
            dfk_parts.insert(0, vc @ xp.matrix_transpose(dS) + dz + xp.matrix_transpose(da) @ fqc)
            dv_parts.insert(0, fkc @ dS + xp.matrix_transpose((fqc @ xp.matrix_transpose(fkc)) * mask) @ dn)
            dS = dS + xp.matrix_transpose(fqc) @ dn  # this chunk's queries read the state of every earlier key
            dz = dz + xp.sum(fqc * dd, axis=-2, keepdims=True)
        dfq, dfk, dv = (xp.concat(p, axis=-2) for p in (dfq_parts, dfk_parts, dv_parts))
    dq = _phi_backward(dfq, ctx.q, fq, ctx.feature_map, ctx.features)  # forward: fq = phi(q)
    dk = _phi_backward(dfk, ctx.k, fk, ctx.feature_map, ctx.features)  # forward: fk = phi(k)
    return dq, dk, dv


def _example(rng: Any) -> Case:
    q, k, v = rng.normal(size=(2, 2, 5, 4)), rng.normal(size=(2, 2, 5, 4)), rng.normal(size=(2, 2, 5, 3))
    return Case((q, k, v), {"is_causal": True, "chunk": 2})


def _cases(t: Any) -> Any:
    @t.st.composite
    def cases(draw: Any) -> Case:
        lead = draw(t.shapes(min_dims=0, max_dims=2, max_side=2))
        # At least 2 keys and 2 features: with one key, or one feature (phi(q) a scalar, which cancels in
        # num / den), out does not depend on q, so dq is exactly 0 and finite differences measure only noise.
        tq, d, dv = draw(t.sides(2, 6)), draw(t.sides(2, 4)), draw(t.sides(1, 3))
        causal = draw(t.st.booleans())
        tk = tq if causal else draw(t.sides(2, 6))
        q = draw(t.float_arrays(lead + (tq, d), low=-1.0, high=1.0))
        k = draw(t.float_arrays(lead + (tk, d), low=-1.0, high=1.0))
        v = draw(t.float_arrays(lead + (tk, dv)))
        feature_map, features = "elu", None
        if draw(t.st.booleans()):
            # Positional, like q: the backends' tests move positional arrays, and the features are one.
            feature_map = "favor"
            features = draw(t.float_arrays((draw(t.sides(2, 5)), d), low=-1.0, high=1.0))
        return Case((q, k, v, causal, feature_map, features, draw(t.st.integers(1, 4))))

    return cases()


register_op(
    "linear_attention",
    linear_attention_forward,
    linear_attention_backward,
    example=_example,
    cases=_cases,
    differentiable=(0, 1, 2),
)
