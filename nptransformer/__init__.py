"""nptransformer: Transformers in plain array code, every backward written by hand.

>>> import nptransformer as npt
>>> npt.backend.get_backend()
'numpy'
"""

__version__ = "0.1.0"

from . import backend, functional, generation, kernels, models, nn, optim, parallel, registry, viz
from .backend import manual_seed, set_backend
from .grad_mode import is_grad_enabled, no_grad
from .io import load_checkpoint, save_checkpoint
from .parallel import get_num_threads, num_threads, set_num_threads
from .models import BERT, GPT, T5, Seq2SeqTransformer
from .pretrained_t5 import load_t5
from .tokenizers import BertTokenizer, CharTokenizer
from .tokenizer_bpe import ByteLevelBPETokenizer

__all__ = ["__version__", "backend", "functional", "kernels", "registry", "nn", "optim", "models", "generation", "viz", "no_grad", "is_grad_enabled",
           "manual_seed", "set_backend", "GPT", "Seq2SeqTransformer", "BERT", "T5", "load_t5", "BertTokenizer", "CharTokenizer", "ByteLevelBPETokenizer",
           "save_checkpoint", "load_checkpoint", "parallel", "set_num_threads", "get_num_threads", "num_threads"]
