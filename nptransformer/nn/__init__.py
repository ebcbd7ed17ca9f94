"""torch.nn-shaped layers with hand-written backward passes.

Layers compose the ops of :mod:`nptransformer.kernels.ops` (the reference
math of :mod:`nptransformer.functional`, run by the fastest kernel that
applies). Each layer registers its gradient check beside its definition
(:mod:`nptransformer.registry`).
"""

from . import init
from .activation import GELU, ReLU
from .attention import MultiheadAttention
from .dropout import Dropout
from .embedding import Embedding
from .feed_forward import FeedForward
from .gated_feed_forward import GatedFeedForward
from .grouped_attention import GroupedQueryAttention
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, ModuleList, Parameter
from .normalization import LayerNorm, RMSNorm
from .recurrent import GRU, LSTM, GRUCell, LSTMCell
from .relative_position import RelativePositionBias
from .rnn_attention import BahdanauAttention, LuongAttention
from .transformer import Transformer, TransformerDecoder, TransformerEncoder
from .transformer_layers import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = [
    "init", "Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "ReLU", "GELU",
    "FeedForward", "MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
    "TransformerDecoder", "Transformer", "CrossEntropyLoss", "GatedFeedForward", "RelativePositionBias",
    "LSTM", "GRU", "LSTMCell", "GRUCell", "BahdanauAttention", "LuongAttention",
]
