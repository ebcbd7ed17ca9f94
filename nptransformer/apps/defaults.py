"""Every command's defaults in one place: the parser (:mod:`.cli`) and the programs read them from here.

>>> Demo().steps, TrainChar().d_model, BenchConfig().d_model
(800, 128, 256)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Demo:
    """``demo``: the gradient-check table, then an encoder-decoder learning to reverse digits."""

    steps: int = 800
    threads: int = 1  # BLAS threads; 0: BLAS's default (docs/training.md)


#: ``train-char --precision`` (and :func:`~nptransformer.apps.train_char.train_char_gpt`'s ``precision``).
PRECISIONS = ("float32", "float16", "mixed", "bfloat16")


@dataclass(frozen=True)
class TrainChar:
    """``train-char``: a character-level GPT on a text file."""

    steps: int = 1600
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    block_size: int = 128
    batch_size: int = 32
    lr: float = 2e-3
    dropout: float = 0.0
    eval_every: int = 200
    sample_chars: int = 500
    plot: str = "char_gpt_loss.png"
    threads: int = 1
    seed: int = 0
    parallel: str = "none"  # data | tensor | pipeline, under mpiexec -n N (docs/distributed.md)
    micro_batches: int = 4  # pipeline micro-batches per batch


@dataclass(frozen=True)
class Embed:
    """``embed``: texts embedded by a Hugging Face BERT checkpoint."""

    dtype: str = "float32"


@dataclass(frozen=True)
class Generate:
    """``generate``: continue a prompt with a GPT-2 checkpoint."""

    max_new_tokens: int = 64  # reduced to the room the model's context leaves after the prompt
    temperature: float = 1.0
    num_beams: int = 1
    length_penalty: float = 0.6
    dtype: str = "float32"


@dataclass(frozen=True)
class Serve:
    """``serve``: a checkpoint over HTTP (docs/serving.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16  # requests sharing one forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for company after its first request
    max_queue: int = 256  # waiting requests before answering 503 busy
    cache_size: int = 1024  # results remembered (LRU); 0 turns the cache off
    dtype: str = "float32"
    threads: int = 1  # BLAS threads; 0: BLAS's default (docs/serving.md: two threads were far slower here)


@dataclass
class BenchConfig:
    """What to run. ``seq_len`` None means ``block_size``; ``threads`` None keeps the BLAS library's count."""

    vocab_size: int = 512
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    batch_size: int = 16
    seq_len: int | None = None
    dtype: str = "float32"
    dropout: float = 0.0
    steps: int = 10
    warmup: int = 2
    backend: str = "numpy"
    checkpoint_activations: bool = False
    compare_torch: bool = False
    threads: int | None = None
    pool: bool = True
    retain_memory: bool = True
    reference: bool = False
    gemm_size: int = 2048
    profile: bool = False
    memory: bool = True
    generation: bool = True
    jobs: bool = True
    seed: int = 0

    @property
    def tokens(self) -> int:
        """Tokens per step, B * T."""
        return self.batch_size * (self.seq_len or self.block_size)
