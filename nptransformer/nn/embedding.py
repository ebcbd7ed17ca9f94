"""``Embedding``: a lookup table of vectors, as ``torch.nn.Embedding``."""

from __future__ import annotations

from typing import Any

from .. import _checks, backend
from ..kernels.ops import embedding_backward, embedding_forward
from ..registry import ModuleCheck, register_module_check
from .module import Module, Parameter


class Embedding(Module):
    """Rows of ``weight`` (num_embeddings, embedding_dim) picked by integer ids.

    Shapes: ids (...) -> (..., embedding_dim). Initialised N(0, 1) as PyTorch
    does (models re-initialise); the ``padding_idx`` row starts at zero and
    never receives gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: Any = "float32", generator: Any = None):
        super().__init__()
        _checks.check_positive_int("num_embeddings", num_embeddings)
        _checks.check_int_at_least("embedding_dim", embedding_dim, 0)
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx must be in [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx % num_embeddings if padding_idx is not None else None
        g = generator or backend.default_generator
        weight = g.normal((num_embeddings, embedding_dim), dtype=dtype)
        if self.padding_idx is not None:
            weight[self.padding_idx, :] = 0.0
        self.weight = Parameter(weight)

    def forward(self, ids: Any) -> Any:
        """ids (...) integer -> vectors (..., embedding_dim)."""
        out, ctx = embedding_forward(ids, self.weight.data, padding_idx=self.padding_idx)
        self.save_for_backward(ctx)
        return out

    def backward(self, dout: Any) -> None:
        """Adds the scattered gradient into ``weight.grad``; ids have no gradient, so returns None."""
        self.weight.accumulate(embedding_backward(dout, self.saved(dout)))
        return None

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


def _check(rng: Any) -> ModuleCheck:
    # id 0 is padding: torch's rule gives its row no gradient, which differs from the true derivative
    ids = backend.asarray([[1, 3, 3], [2, 1, 4]], dtype="int64")
    return ModuleCheck(Embedding(5, 3, padding_idx=0, dtype="float64"), (ids,), wrt=())


register_module_check("Embedding", _check)
