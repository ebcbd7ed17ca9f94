"""``EfficientSelfAttention``: multi-head self-attention on a sub-quadratic op, for long sequences.

The same parameters as :class:`~nptransformer.nn.MultiheadAttention`
(``in_proj_weight`` (3E, E), ``in_proj_bias``, ``out_proj``), so a
checkpoint moves between them; only the op between the projections changes:

- ``kind="sliding_window"``: :func:`~nptransformer.functional.sliding_window_attention_forward`,
  each query sees ``window`` keys on each side (before it, when causal),
  the first ``global_tokens`` positions (Longformer / BigBird) and
  ``random_blocks`` whole key blocks drawn once from ``seed`` (BigBird);
- ``kind="linear"``: :func:`~nptransformer.functional.linear_attention_forward`,
  ``feature_map="elu"`` (elu + 1) or ``"favor"`` (Performer's positive random
  features, ``num_features`` of them, drawn once at construction and kept as
  the constant buffer ``features``).

Exact softmax attention needs no option here: for long key rows the
dispatch already runs it tiled, in O(T) memory
(:mod:`nptransformer.kernels.tiled_attention`). ``GPT(attention={...})``
and ``TransformerEncoderLayer(..., attention={...})`` build one from these
options in place of MultiheadAttention.

Neither op takes a mask beyond causality, attention dropout or a KV cache:
those arguments are refused with a ValueError rather than ignored.
"""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..backend import get_array_module
from ..functional.linear_attention import FEATURE_MAPS, favor_features
from ..functional.sparse_attention import check_pattern
from ..kernels import ops
from ..registry import ModuleCheck, register_module_check
from . import init
from .linear import Linear
from .module import Module, Parameter

KINDS = ("sliding_window", "linear")


class EfficientSelfAttention(Module):
    """Self-attention x (B, L, E) -> (B, L, E) with sliding-window or linear attention per head (module docstring).

    ``window``, ``global_tokens``, ``random_blocks``, ``seed``: the sliding
    window's (the random blocks are the same pattern at every call); ``feature_map``,
    ``num_features``: linear attention's (``num_features`` for "favor" only;
    ``generator`` draws the features and the initial weights).
    """

    def __init__(self, embed_dim: int, num_heads: int, kind: str = "sliding_window", window: int = 128,
                 global_tokens: int = 0, feature_map: str = "elu", num_features: int = 64, bias: bool = True,
                 dtype: Any = "float32", generator: Any = None, random_blocks: int = 0, seed: int = 0):
        super().__init__()
        _checks.check_positive_int("embed_dim", embed_dim)
        _checks.check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.embed_dim, self.num_heads, self.head_dim, self.kind = embed_dim, num_heads, embed_dim // num_heads, kind
        self.window, self.global_tokens, self.feature_map = window, global_tokens, feature_map
        self.random_blocks, self.seed = random_blocks, seed
        self.in_proj_weight = Parameter(backend.zeros((3 * embed_dim, embed_dim), dtype=dtype))
        init.xavier_uniform_(self.in_proj_weight, generator=generator)
        self.in_proj_bias = Parameter(backend.zeros((3 * embed_dim,), dtype=dtype)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype, generator=generator)
        if bias:
            self.out_proj.bias.data = backend.zeros((embed_dim,), dtype=dtype)
        if kind == "sliding_window":
            check_pattern(window, global_tokens)  # now, not at the first forward
        elif feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        features = None
        if kind == "linear" and feature_map == "favor":
            features = favor_features(num_features, self.head_dim, generator, dtype=dtype)
        # Persistent: a checkpoint keeps the features the weights were trained with.
        self.register_buffer("features", features, persistent=features is not None)
        self.attn_weights = None

    def _op_options(self, is_causal: bool) -> dict:
        if self.kind == "sliding_window":
            return {"window": self.window, "global_tokens": self.global_tokens, "is_causal": is_causal,
                    "random_blocks": self.random_blocks, "seed": self.seed}
        return {"is_causal": is_causal, "feature_map": self.feature_map, "features": self.features}

    def forward(self, x: Any, attn_mask: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                need_weights: bool = False, cache: Any = None) -> Any:
        """The same as :meth:`self_attention`."""
        return self.self_attention(x, attn_mask, key_padding_mask, is_causal, need_weights, cache)

    def self_attention(self, x: Any, attn_mask: Any = None, key_padding_mask: Any = None, is_causal: bool = False,
                       need_weights: bool = False, cache: Any = None) -> Any:
        """x (B, L, E) -> (B, L, E); ``is_causal`` as MultiheadAttention's. The other arguments must be left unset."""
        _checks.check_float("x", x)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (B, T, {self.embed_dim}), got {tuple(x.shape)}")
        _checks.check_last_dim("x", x, self.embed_dim, "embed_dim")
        for name, value in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask), ("cache", cache)):
            if value is not None:
                raise ValueError(f"EfficientSelfAttention(kind={self.kind!r}) takes no {name} (got one); only "
                                 f"is_causal: use MultiheadAttention for masked or cached attention")
        if need_weights:
            raise ValueError(f"EfficientSelfAttention(kind={self.kind!r}) forms no attention matrix: need_weights "
                             f"must be False")
        B, L, E = x.shape
        y, proj = ops.linear_forward(x, self.in_proj_weight.data,
                                     None if self.in_proj_bias is None else self.in_proj_bias.data)
        q, k, v = (self._heads(y[:, :, i * E:(i + 1) * E]) for i in range(3))  # (B, H, L, D)
        if self.kind == "sliding_window":
            o, ctx = ops.sliding_window_attention_forward(q, k, v, **self._op_options(is_causal))
        else:
            o, ctx = ops.linear_attention_forward(q, k, v, **self._op_options(is_causal))
        self.save_for_backward((proj, ctx))
        return self.out_proj(self._merge(o))

    def _heads(self, y: Any) -> Any:
        """(B, T, E) -> (B, H, T, D)."""
        xp = get_array_module(y)
        return xp.permute_dims(xp.reshape(y, (y.shape[0], y.shape[1], self.num_heads, self.head_dim)), (0, 2, 1, 3))

    @staticmethod
    def _merge(g: Any) -> Any:
        """(B, H, T, D) -> (B, T, H D)."""
        xp = get_array_module(g)
        return xp.reshape(xp.permute_dims(g, (0, 2, 1, 3)), (g.shape[0], g.shape[2], g.shape[1] * g.shape[3]))

    def backward(self, dy: Any) -> Any:
        """dL/dy (B, L, E) -> dx (B, L, E); accumulates every parameter's gradient."""
        proj, ctx = self.saved()
        xp = get_array_module(dy)
        do = self._heads(self.out_proj.backward(dy))  # forward: y = merge(o) W_o^T + b_o
        if self.kind == "sliding_window":
            dq, dk, dv = ops.sliding_window_attention_backward(do, ctx)
        else:
            dq, dk, dv = ops.linear_attention_backward(do, ctx)
        dy_proj = xp.concat([self._merge(g) for g in (dq, dk, dv)], axis=-1)  # (B, L, 3E)
        dx, dw, db = ops.linear_backward(dy_proj, proj)  # forward: [q | k | v] = x W_in^T + b_in
        self.in_proj_weight.accumulate(dw)
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(db)
        return dx

    def extra_repr(self) -> str:
        if self.kind == "sliding_window":
            return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kind='sliding_window', "
                    f"window={self.window}, global_tokens={self.global_tokens}")
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kind='linear', "
                f"feature_map={self.feature_map!r}")


def _check(**options: Any) -> Any:
    def build(rng: Any) -> ModuleCheck:
        m = EfficientSelfAttention(8, 2, dtype="float64", generator=backend.Generator(0), **options)
        m.in_proj_bias.data = backend.asarray(rng.normal(size=m.in_proj_bias.shape) * 0.1)
        return ModuleCheck(m, (rng.normal(size=(2, 7, 8)),), {"is_causal": True})

    return build


register_module_check("EfficientSelfAttention.sliding_window",
                      _check(kind="sliding_window", window=1, global_tokens=1, random_blocks=1))
register_module_check("EfficientSelfAttention.linear", _check(kind="linear"))
register_module_check("EfficientSelfAttention.favor", _check(kind="linear", feature_map="favor", num_features=6))
