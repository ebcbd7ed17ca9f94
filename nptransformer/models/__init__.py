"""Complete models around :mod:`nptransformer.nn`: ``GPT``, ``BERT``, ``Seq2SeqTransformer``, ``T5``."""

from .bert import BERT, BERTWithHead
from .bert_classifier import BertForSequenceClassification
from .gpt import GPT
from .rnn_seq2seq import RNNSeq2Seq
from .seq2seq import Seq2SeqTransformer
from .t5 import T5

__all__ = ["BERT", "BERTWithHead", "BertForSequenceClassification", "GPT", "Seq2SeqTransformer", "T5", "RNNSeq2Seq"]
