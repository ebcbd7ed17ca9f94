"""torch.nn-shaped layers with hand-written backward passes.

Every layer here is also registered for the gradient check (see
:mod:`nptransformer.nn.layer_checks`).
"""

from . import init, layer_checks  # noqa: F401  (layer_checks registers each layer with the gradient suite)
from .activation import GELU, ReLU
from .attention import MultiheadAttention
from .dropout import Dropout
from .embedding import Embedding
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Module, ModuleList, Parameter
from .normalization import LayerNorm, RMSNorm
from .transformer import Transformer, TransformerDecoder, TransformerEncoder
from .transformer_layers import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = [
    "init", "Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "ReLU", "GELU",
    "MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
    "TransformerDecoder", "Transformer", "CrossEntropyLoss",
]
