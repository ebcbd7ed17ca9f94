"""``scaled_dot_product_attention.keys_major``: scores stored keys first, so the softmax runs over long rows.

The softmax of attention is taken over the keys, the last axis of the
(..., Tq, Tk) scores. On NumPy that axis is short (Tk = 128 in the bench's
GPT), and each step of the softmax pays for it: the row maximum and row sum
reduce 128 entries at a time, and subtracting the maximum or dividing by
the sum broadcasts a (..., Tq, 1) column, one inner loop call per row
(measured: 41 us to subtract a column from 1,024 rows of 128, against 32 to
subtract a row from the same entries laid out the other way).

This kernel stores the scores transposed, S[j, ..., i] = q_i . k_j * scale:
keys on the first axis, queries on the last. The same softmax over j is then
a reduction along axis 0 and a broadcast of a (..., Tq) row over the keys,
where every inner loop runs along a whole slab of queries. Only the layout
changes: the products write straight into the transposed array (a
matrix product may write its rows with any stride), and the backward's
formulas are the reference's (docs/ops/attention.md) read with the two axes
swapped.

The stack of (batch, head) pairs is cut into parts of about ``part_elements``
scores. With :func:`nptransformer.set_num_threads` above 1 the parts are
pipelined (:func:`nptransformer.parallel.pipeline`): a worker multiplies the
next part's scores while this thread runs the softmax over the last, then
the products that follow are split over the threads. Measured on the bench's
layer (16 x 4 heads, T = 128, D = 64, causal, float32), forward / backward:
3.1 / 3.5 ms against 3.5 / 4.0 for ``scaled_dot_product_attention.blocked``
on two threads, 4.4 / 5.3 against 5.6 / 6.2 on one.

It applies to NumPy arrays with the same leading axes on q, k and v, without
a bias, and more than one query (a decoding step's single query has no
short rows to lengthen: there the reference was 10 % faster). Masks are
laid out keys first too, (Tk, ..., Tq), their axes of length 1 kept for
broadcasting: a float mask is added, a boolean one and ``is_causal`` set
the scores they hide to -inf, in the reference's order. Dropout's keep mask
is the reference's for the whole (..., Tq, Tk) matrix (the same uniforms,
drawn in blocks on the pool's threads: :func:`.dropout.streamed_keep_mask`),
read keys first: the same entries are dropped from the same generator
state. A causal attention of
:data:`CAUSAL_BELOW` queries or more is left to the blocked kernel, which
skips the keys a block of queries cannot see.

>>> import numpy as np
>>> from nptransformer.functional import scaled_dot_product_attention_forward
>>> q = k = v = np.random.default_rng(0).normal(size=(2, 3, 5, 4))
>>> out, ctx = KeysMajorAttention().forward(q, k, v, is_causal=True)
>>> want, want_ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
>>> bool(np.allclose(out, want, rtol=1e-12, atol=1e-14)), bool(np.allclose(ctx.probs, want_ctx.probs, atol=1e-15))
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import parallel
from ..backend import dtype_name
from ..functional.attention import attention_cases, causal_mask, check_attention_inputs
from ..registry import Case
from ._rows import BLOCK_ELEMENTS
from .dispatch import Kernel, register_kernel
from .dropout import streamed_keep_mask, zero_where_dropped
from .softmax import softmax_rows

#: Scores per part (512 KiB of float32: a part's softmax temporaries stay in a 2 MiB L2 cache). On the
#: bench's layer (two threads), forward / backward with parts of 8 heads (2^17 scores): 3.1 / 3.6 ms; of 4
#: heads: 3.4 / 3.8; of 16: 3.2 / 3.9.
PART_ELEMENTS = 1 << 17
#: Below this many scores (B * H * T_q * T_k) the reference runs. Measured forward / backward, ms, one thread
#: (two alike): (1, 12, 20, 20) 0.046 / 0.043 against the reference's 0.047 / 0.032; (2, 4, 64, 64) 0.13 / 0.16
#: against 0.18 / 0.15; (4, 12, 40, 40) 0.42 / 0.68 against 0.55 / 0.78.
REFERENCE_BELOW = 1 << 15
#: Causal attention of this many queries or more goes to the blocked kernel, whose query blocks skip the keys
#: they cannot see. Forward + backward of 64 / T heads of 64 (two threads; one): T = 512, 20.5 against 21.7 ms
#: for the blocked kernel (28.4 against 40.2); T = 1024, 44.8 against 41.2 (57.5 against 58.4).
CAUSAL_BELOW = 1024


@dataclass
class KeysMajorContext:
    """What the backward needs: q, k, v (leading axes kept, at least one), the scale, the parts (index tuples
    into the leading axes), each part's probabilities P[j, ..., i] (Tk, the part's leading axes, Tq) before
    dropout, the dropout's keep mask read keys first and its scale 1/(1-p) (None without dropout), and
    ``squeeze`` when q had no leading axis (one was added)."""

    q: Any
    k: Any
    v: Any
    scale: float
    parts: list
    probs_t: list
    dropout: Any
    squeeze: bool

    @property
    def probs(self) -> Any:
        """The attention probabilities (..., Tq, Tk), laid out as the reference's."""
        p = np.empty(tuple(self.q.shape[:-1]) + (self.k.shape[-2],), dtype=self.probs_t[0].dtype)
        for part, p_t in zip(self.parts, self.probs_t):
            p[part] = np.moveaxis(p_t, 0, -1)
        return p[0] if self.squeeze else p


class KeysMajorAttention(Kernel):
    """Attention with the scores laid out (Tk, ..., Tq), the softmax along their first axis (module docstring).

    Shapes and results as :func:`nptransformer.functional.scaled_dot_product_attention_forward`
    (q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> (..., Tq, Dv)); the
    context (:class:`KeysMajorContext`) offers ``.probs`` as the reference's
    does. Settings: ``part_elements`` (:data:`PART_ELEMENTS`), ``causal_below``
    (:data:`CAUSAL_BELOW` queries), ``reference_below``
    (:data:`REFERENCE_BELOW` scores), ``min_elements``, the
    scores from which the pool splits the work, and ``block_elements``, the
    dropout uniforms drawn at a time.
    """

    op = "scaled_dot_product_attention"
    name = "scaled_dot_product_attention.keys_major"
    defaults = {"part_elements": PART_ELEMENTS, "causal_below": CAUSAL_BELOW, "reference_below": REFERENCE_BELOW,
                "min_elements": parallel.MIN_ELEMENTS, "block_elements": BLOCK_ELEMENTS}
    test_settings = {"part_elements": 1, "causal_below": 1 << 30, "reference_below": 0, "min_elements": 1,
                     "block_elements": 3}
    backends = ("numpy",)  # products written into strided views (out=): NumPy's matmul only

    def applies(self, q: Any, k: Any = None, v: Any = None, attn_mask: Any = None, dropout_p: float = 0.0,
                is_causal: bool = False, scale: Any = None, generator: Any = None, bias: Any = None) -> bool:
        if not all(isinstance(a, np.ndarray) for a in (q, k, v)) or q.ndim < 2 or q.shape[-2] < 2:
            return False
        if bias is not None:
            return False
        if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]) or q.dtype not in (np.float32, np.float64):
            return False
        if is_causal and q.shape[-2] >= self.settings["causal_below"]:
            return False
        return math.prod(q.shape[:-1]) * k.shape[-2] >= self.settings["reference_below"]

    def forward(self, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
                scale: float | None = None, generator: Any = None, bias: Any = None) -> tuple[Any, KeysMajorContext]:
        check_attention_inputs(q, k, v, attn_mask, dropout_p, generator, bias)
        if bias is not None:
            raise ValueError(f"{self.name} takes no bias; the dispatch sends it to scaled_dot_product_attention.blocked")
        squeeze = q.ndim == 2  # the parts cut the first leading axis: give q one
        q, k, v = (a[None] if squeeze else a for a in (q, k, v))
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        tq, tk = q.shape[-2], k.shape[-2]
        parts = self._parts(tuple(q.shape[:-2]), tq * tk)
        mask_t = None if attn_mask is None else _keys_first(attn_mask, q.ndim)
        hide = attn_mask is not None and dtype_name(attn_mask.dtype) == "bool"
        # Drawn once for the whole (..., Tq, Tk) matrix, as the reference draws it (the same entries dropped from
        # the same generator state), and read keys first.
        dropout = None
        if dropout_p != 0:
            keep = streamed_keep_mask(math.prod(q.shape[:-1]) * tk, dropout_p, generator, self.settings)
            dropout = (np.moveaxis(keep.reshape(tuple(q.shape[:-1]) + (tk,)), -1, 0), 1.0 / (1.0 - dropout_p))
        masks: dict[tuple, Any] = {}  # part shape -> its causal mask, made once a call

        def causal(shape: tuple) -> Any:
            """(Tk, ..., Tq) boolean, True where key j > query i, laid out as a part: set with one flat
            ``copyto`` (37 us for a part of 8 heads, against 65 broadcasting a (Tk, 1, Tq) mask). Set, not
            added: a masked score that is inf or NaN must still become -inf, as the reference's ``where``."""
            if shape not in masks:
                hidden = causal_mask(tq, tk, like=q).T.reshape((tk,) + (1,) * (len(shape) - 2) + (tq,))
                masks[shape] = np.ascontiguousarray(np.broadcast_to(hidden, shape))
            return masks[shape]

        probs_t: list[Any] = [None] * len(parts)

        def scores(i: int) -> None:  # S[j, ..., i] = k_j . (q_i * scale), written transposed
            part = parts[i]
            qs = q[part] * scale  # half the scores' size: cheaper to scale than the scores
            s = np.empty((tk,) + tuple(qs.shape[:-2]) + (tq,), dtype=q.dtype)
            np.matmul(k[part], np.swapaxes(qs, -1, -2), out=np.moveaxis(s, 0, -2))
            probs_t[i] = s

        def softmax(i: int) -> None:  # along the keys, axis 0, in place
            s = probs_t[i]
            if mask_t is not None and not hide:
                s += _part_of(mask_t, parts[i])  # a float mask is added first, as in the reference
            if hide:
                np.copyto(s, -np.inf, where=_part_of(mask_t, parts[i]))  # True = may not attend
            if is_causal:
                np.copyto(s, -np.inf, where=causal(s.shape))
            softmax_rows(s, 0, out=s)  # the softmax kernel's body, along the keys: all -inf gives zeros

        # In q's memory order: heads split from one projection are (B, T, H, D) in memory, and an output laid
        # out so merges its heads back into (B, T, H * D) as a view, not a transposing copy.
        out = np.empty_like(q, shape=tuple(q.shape[:-1]) + (v.shape[-1],), dtype=np.result_type(q.dtype, v.dtype))

        def weighted(first: int, last: int) -> None:  # out = W v, W = dropout(P) read as (..., Tq, Tk)
            for i in range(first, last):
                np.matmul(np.moveaxis(_dropped(probs_t[i], dropout, parts[i]), 0, -1), v[parts[i]], out=out[parts[i]])

        parallel.pipeline(scores, softmax, [(i,) for i in range(len(parts))])
        parallel.run(weighted, self._slabs(parts, out.size))
        return (out[0] if squeeze else out), KeysMajorContext(q, k, v, scale, parts, probs_t, dropout, squeeze)

    def backward(self, dout: Any, ctx: KeysMajorContext) -> tuple[Any, Any, Any, None]:
        q, k, v, parts, probs_t = ctx.q, ctx.k, ctx.v, ctx.parts, ctx.probs_t
        dout = dout[None] if ctx.squeeze else dout
        dtype = np.result_type(dout.dtype, q.dtype)
        dq, dk, dv = _gradients_like((q, k, v), dtype)
        ds_t: list[Any] = [None] * len(parts)

        def products(i: int) -> None:
            part = parts[i]
            dw_t = np.empty(probs_t[i].shape, dtype=dtype)
            np.matmul(v[part], np.swapaxes(dout[part], -1, -2), out=np.moveaxis(dw_t, 0, -2))  # dW = dout v^T
            w_t = _dropped(probs_t[i], ctx.dropout, part)  # W rebuilt from P and the mask (not saved)
            np.matmul(np.moveaxis(w_t, 0, -2), dout[part], out=dv[part])  # dv = W^T dout
            ds_t[i] = _dropped(dw_t, ctx.dropout, part)  # dP = dropout's backward of dW

        def softmax_backward(i: int) -> None:  # dS = P (dP - sum_j dP P), in place over dP
            p_t, ds = probs_t[i], ds_t[i]
            ds *= p_t
            ds -= p_t * ds.sum(axis=0)  # P (dP - c) = dP P - P c, c = sum_j dP P along the keys

        def inputs(first: int, last: int) -> None:
            for i in range(first, last):
                part, ds = parts[i], ds_t[i]
                np.matmul(np.moveaxis(ds, 0, -1), k[part], out=dq[part])  # dq = dS k * scale
                dq[part] *= ctx.scale
                np.matmul(np.moveaxis(ds, 0, -2), q[part], out=dk[part])  # dk = dS^T q * scale
                dk[part] *= ctx.scale

        parallel.pipeline(products, softmax_backward, [(i,) for i in range(len(parts))])
        parallel.run(inputs, self._slabs(parts, dq.size + dk.size))
        if ctx.squeeze:
            dq, dk, dv = dq[0], dk[0], dv[0]
        return dq, dk, dv, None

    def _parts(self, lead: tuple, scores_each: int) -> list[tuple]:
        """Index tuples into the leading axes, each part holding about ``part_elements`` scores: ranges of the
        first axis, or, where one of its rows holds more, ranges of the second axis within each row."""
        target = self.settings["part_elements"]
        if math.prod(lead) * scores_each < self.settings["min_elements"]:
            return [(slice(None),)]  # too little work to pipeline: one part
        per_row = math.prod(lead[1:]) * scores_each
        if per_row <= target or len(lead) < 2:
            rows = max(1, target // max(per_row, 1))
            return [(slice(lo, lo + rows),) for lo in range(0, lead[0], rows)]
        cols = max(1, target // max(math.prod(lead[2:]) * scores_each, 1))
        return [(row, slice(lo, lo + cols)) for row in range(lead[0]) for lo in range(0, lead[1], cols)]

    def _slabs(self, parts: list, elements: int) -> list[tuple[int, int]]:
        """The parts cut into one run of consecutive parts per thread (few, long slabs: a handoff per part
        cost more than it saved when parts of 8 heads were split one by one)."""
        return parallel.slabs(len(parts), elements, self.settings["min_elements"])

    def example(self, rng: Any) -> Case:
        """Causal attention of 2 x 2 heads, 5 queries and keys: what the kernel takes."""
        q, k, v = (rng.normal(size=(2, 2, 5, 4)) for _ in range(3))
        return Case((q, k, v, None, 0.0, True, None, None, None))

    def cases(self, t: Any) -> Any:
        """The reference's cases without a bias (masks and dropout included), up to 7 queries."""
        return attention_cases(t, max_len=7, bias=False)


def _dropped(x_t: Any, dropout: Any, part: tuple) -> Any:
    """Dropout applied to a keys-first part: x where kept, times 1/(1-p), 0 where dropped; x itself without
    dropout. The forward's W = dropout(P) and the backward's dP = dropout's backward of dW, the same map."""
    if dropout is None:
        return x_t
    keep_t, scale = dropout
    kept = x_t * scale
    zero_where_dropped(kept, keep_t[(slice(None),) + part])  # no branch: np.where on a random mask is slow
    return kept


def _keys_first(mask: Any, ndim: int) -> Any:
    """A mask broadcastable to (..., Tq, Tk) as a view (Tk, ..., Tq) of ``ndim`` axes, its axes of length 1 kept."""
    full = np.reshape(mask, (1,) * (ndim - mask.ndim) + tuple(mask.shape))
    return np.moveaxis(full, -1, 0)


def _part_of(mask_t: Any, part: tuple) -> Any:
    """The entries of a keys-first mask that cover a part of the leading axes; an axis of length 1 is broadcast
    (kept, or dropped where the part picks one index)."""
    index = [slice(None)]  # the keys
    for axis, pick in enumerate(part):
        if mask_t.shape[1 + axis] == 1:
            index.append(0 if isinstance(pick, int) else slice(None))
        else:
            index.append(pick)
    return mask_t[tuple(index)]


def _gradients_like(arrays: tuple, dtype: Any) -> list:
    """Uninitialised arrays of ``arrays``' shapes and memory layout, of ``dtype``.

    When the arrays are views that exactly tile one contiguous array (q, k and
    v split from one (B, T, 3 * H * D) projection), the results are the same
    views into one new array: the gradients are then already merged into the
    projection's layout, and ``MultiheadAttention`` passes that array to the
    projection's backward without copying the heads back together.
    """
    base = arrays[0].base
    if (base is not None and all(a.base is base for a in arrays) and base.flags.c_contiguous and base.dtype == dtype
            and base.size == sum(a.size for a in arrays) and not _overlap(arrays)):
        merged = np.empty_like(base)
        start = base.__array_interface__["data"][0]
        return [np.ndarray(a.shape, dtype=dtype, buffer=merged, offset=a.__array_interface__["data"][0] - start,
                           strides=a.strides) for a in arrays]
    return [np.empty_like(a, dtype=dtype) for a in arrays]  # in memory as q, k, v: see forward


def _overlap(arrays: tuple) -> bool:
    """Whether any two of the views share an element (or the check would take too long to say)."""
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            try:
                if np.shares_memory(a, b, max_work=1 << 16):
                    return True
            except np.exceptions.TooHardError:
                return True
    return False


register_kernel(KeysMajorAttention())
