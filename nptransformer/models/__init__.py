"""Complete models around :mod:`nptransformer.nn`: ``GPT``, ``Seq2SeqTransformer``."""

from . import model_checks  # noqa: F401  (registers each model with the gradient-check suite)
from .gpt import GPT
from .seq2seq import Seq2SeqTransformer

__all__ = ["GPT", "Seq2SeqTransformer"]
