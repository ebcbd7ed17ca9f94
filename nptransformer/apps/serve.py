"""``python -m nptransformer serve``: a checkpoint over HTTP, with dynamic batching and a cache (docs/serving.md)."""

from __future__ import annotations

from typing import Any

from ..serving.app import run
from ..serving.services import load_service
from ..training import blas_threads


def run_cli(args: Any) -> int:
    """``nptransformer serve --model DIR``: embeddings for a BERT checkpoint, generation for a GPT-2 one."""
    service = load_service(args.model, dtype=args.dtype)
    print(f"serving {args.model} ({service.kind}) on http://{args.host}:{args.port}", flush=True)
    with blas_threads(args.threads or None):  # process-wide: the batch worker thread is limited too
        run(service, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, cache_size=args.cache_size)
    return 0
