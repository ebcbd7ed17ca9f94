"""Complete models around :mod:`nptransformer.nn`: ``GPT``, ``BERT``, ``Seq2SeqTransformer``."""

from .bert import BERT, BERTWithHead
from .gpt import GPT
from .seq2seq import Seq2SeqTransformer

__all__ = ["BERT", "BERTWithHead", "GPT", "Seq2SeqTransformer"]
