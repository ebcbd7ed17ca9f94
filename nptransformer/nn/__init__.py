"""torch.nn-shaped layers with hand-written backward passes.

Layers compose the ops of :mod:`nptransformer.kernels.ops` (the reference
math of :mod:`nptransformer.functional`, run by the fastest kernel that
applies). Each layer registers its gradient check beside its definition
(:mod:`nptransformer.registry`).
"""

from . import init
from .activation import GELU, ReLU
from .attention import MultiheadAttention
from .batch_norm import BatchNorm1d
from .dropout import Dropout
from .efficient_attention import EfficientSelfAttention
from .embedding import Embedding
from .feed_forward import FeedForward
from .gated_feed_forward import GatedFeedForward
from .grouped_attention import GroupedQueryAttention
from .linear import Linear
from .loss import CrossEntropyLoss
from .mixture_of_experts import MixtureOfExperts, load_balancing_loss
from .module import Module, ModuleList, Parameter
from .normalization import LayerNorm, RMSNorm
from .recurrent import GRU, LSTM, GRUCell, LSTMCell
from .mixed_precision import MixedPrecision
from .distillation import DistillationLoss
from .qat import FakeQuantLinear, prepare_qat
from .quantized import QuantizedLinear, quantize_dynamic
from .relative_position import RelativePositionBias
from .rnn_attention import BahdanauAttention, LuongAttention
from .transformer import Transformer, TransformerDecoder, TransformerEncoder
from .transformer_layers import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = [
    "DistillationLoss",
    "FakeQuantLinear",
    "prepare_qat",
    "QuantizedLinear",
    "quantize_dynamic",
    "MixedPrecision",
    "init", "Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "ReLU", "GELU",
    "FeedForward", "MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
    "TransformerDecoder", "Transformer", "CrossEntropyLoss", "GatedFeedForward", "RelativePositionBias",
    "LSTM", "GRU", "LSTMCell", "GRUCell", "BahdanauAttention", "LuongAttention",
    "BatchNorm1d", "MixtureOfExperts", "load_balancing_loss", "EfficientSelfAttention",
]
