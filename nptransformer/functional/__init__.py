"""Primitive ops: each a ``*_forward`` returning ``(out, ctx)`` and a hand-written ``*_backward``.

THE REFERENCE: each op is the plain array code of its math, short enough to
read beside its page in docs/ops/, every backward line annotated with the
forward line it reverses. No thread pool, no row blocks, no fused variants:
the fast versions live in :mod:`nptransformer.kernels`, are registered
against these, and are tested against them. Every op is registered in
:data:`nptransformer.registry.OPS`, which is what puts it under the
gradient check.
"""

from .activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from .batch_norm import batch_norm_backward, batch_norm_forward, batch_statistics
from .collectives import (copy_to_group_backward, copy_to_group_forward, reduce_from_group_backward,
                          reduce_from_group_forward)
from .attention import AttentionContext, scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .linear import add_backward, add_forward, linear_backward, linear_forward, matmul_backward, matmul_forward
from .linear_activation import linear_activation_backward, linear_activation_forward
from .losses import cross_entropy_backward, cross_entropy_forward
from .normalization import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward
from .recurrent import gru_cell_backward, gru_cell_forward, lstm_cell_backward, lstm_cell_forward
from .positional import rope_backward, rope_forward, sinusoidal_backward, sinusoidal_forward, sinusoidal_table
from .relative_position import (relative_position_bias_backward, relative_position_bias_forward,
                                relative_position_bucket, relative_positions)
from ..registry import OPS, Case, OpSpec, register_op
from .linear_attention import favor_features, linear_attention_backward, linear_attention_forward
from .sparse_attention import (sliding_window_attention_backward, sliding_window_attention_forward,
                               sliding_window_mask)
from .softmax import log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward
from .distillation import distillation_backward, distillation_forward
from .quantize import fake_quantize_backward, fake_quantize_forward
from .tanh import tanh_backward, tanh_forward

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward"))] + [
    "OPS", "Case", "OpSpec", "register_op", "sinusoidal_table", "AttentionContext", "batch_statistics",
    "relative_position_bucket", "relative_positions", "sliding_window_mask", "favor_features",
]
