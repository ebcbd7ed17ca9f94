"""``TensorParallel``: every Transformer layer's heads and feed-forward columns split across ranks.

Given a built model (GPT, Seq2SeqTransformer, BERT: anything made of
:class:`~nptransformer.nn.TransformerEncoderLayer` /
:class:`~nptransformer.nn.TransformerDecoderLayer`), each layer's
attention becomes a :class:`~.tp_layers.ParallelMultiheadAttention` and
its feed-forward a :class:`~.tp_layers.ParallelFeedForward` holding this
rank's slices of the very weights rank 0 initialised. The embeddings,
norms and output head stay whole and replicated: their inputs and
gradients are the same on every rank (the op pair guarantees it), so they
take identical steps without any communication of their own.

Per layer and step: 2 all-reduces of (B, T, C) forward (attention and
feed-forward outputs) and 2 backward (their input gradients); a decoder
layer's cross-attention adds one more each way, plus one for dmemory.

Random streams: dropout on replicated activations uses a stream shared by
all ranks (they must drop the same entries); dropout on a rank's own heads
and columns uses its own stream (:mod:`.random`).
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from ..backend import Generator, get_array_module, to_numpy
from ..nn.attention import MultiheadAttention
from ..nn.feed_forward import FeedForward
from ..nn.transformer_layers import _Sublayers
from .comm import Communicator, check_divides
from .random import seed_default_generator, step_generator
from .partitioned import Partitioned
from .tp_layers import ParallelFeedForward, ParallelMultiheadAttention, Sharded


class TensorParallel(Partitioned):
    """Tensor parallelism of ``model`` (converted in place) over ``comm`` (default: the MPI world).

    Raises ValueError when the world size does not divide every layer's
    number of heads and feed-forward width.
    """

    mode = "tensor"

    def __init__(self, model: Any, comm: Communicator | None = None, seed: int = 0):
        super().__init__(comm, seed)
        layers = [m for m in model.modules() if isinstance(m, _Sublayers)]
        if not layers:
            raise ValueError(f"TensorParallel: {type(model).__name__} has no Transformer layers to split")
        for layer in layers:
            attn = [layer.self_attn] + ([layer.multihead_attn] if hasattr(layer, "multihead_attn") else [])
            for a in attn:
                if not isinstance(a, MultiheadAttention):
                    raise ValueError(f"TensorParallel splits MultiheadAttention by heads; this model has a "
                                     f"{type(a).__name__} (grouped-query or position-aware attention is not split)")
                check_divides("the number of heads", a.num_heads, self.comm.size)
            if not isinstance(layer.feed_forward, FeedForward):
                raise ValueError(f"TensorParallel splits FeedForward by columns; this model has a "
                                 f"{type(layer.feed_forward).__name__}")
            check_divides("the feed-forward width", layer.linear1.weight.shape[0], self.comm.size)
        for p in model.parameters():  # rank 0's weights everywhere, then each rank keeps its slices
            p.data = backend.asarray(self.comm.broadcast(p.data), dtype=backend.dtype_name(p.dtype))
        self._take_skeleton(model)
        self.generator = Generator(0)  # this rank's stream, reseeded every step
        for layer in layers:
            layer.self_attn = ParallelMultiheadAttention(layer.self_attn, self.comm, self.generator)
            if hasattr(layer, "multihead_attn"):
                layer.multihead_attn = ParallelMultiheadAttention(layer.multihead_attn, self.comm, self.generator)
            layer.register_inline("feed_forward", ParallelFeedForward(layer.feed_forward, self.comm, self.generator))
        self.model = model
        self._sharded = {id(p) for m in model.modules() if isinstance(m, Sharded) for p, _, _ in m.shards}
        specs = {id(p): (axis, blocks) for p, axis, blocks in self.sharded_parameters()}
        self._specs = {n: specs[id(p)] for n, p in model.named_parameters() if id(p) in specs}

    def forward_loss(self, model: Any, criterion: Any, inputs: tuple, targets: Any, step: int) -> float:
        """The whole batch on every rank; the loss is replicated (no reduction needed)."""
        seed_default_generator(self.seed, step)  # shared: replicated activations drop the same entries
        self.generator.set_state(step_generator(self.seed, step, self.comm.rank).state())
        return float(to_numpy(criterion(model(*inputs), targets)))

    def backward(self, model: Any, criterion: Any) -> None:
        """The model's own backward: the op pairs inside it do the all-reduces."""
        model.backward(criterion.backward())

    def clip_grad_norm(self, model: Any, max_norm: float) -> Any:
        """||g||^2 = sum over ranks of the sharded slices' squares + the replicated parameters' squares once."""
        sharded, replicated = 0.0, 0.0
        grads = [p for p in model.parameters() if p.grad is not None]
        for p in grads:
            xp = get_array_module(p.grad)
            sq = float(to_numpy(xp.sum(p.grad * p.grad)))
            if id(p) in self._sharded:
                sharded += sq
            else:
                replicated += sq
        total = math.sqrt(self.comm.allreduce_scalar(sharded) + replicated)
        coef = min(max_norm / (total + 1e-6), 1.0)
        for p in grads:
            p.grad *= coef
        return total

    def sharded_parameters(self) -> list:
        """(Parameter, axis, blocks) for every parameter this rank holds a slice of (:class:`~.tp_layers.Sharded`)."""
        return [s for m in self.model.modules() if isinstance(m, Sharded) for s in m.shards]

    def shard_spec(self, name: str) -> tuple[int, int] | None:
        """(axis, blocks) of a sliced parameter (:class:`~.tp_layers.Sharded`), None for a replicated one."""
        return self._specs.get(name)
