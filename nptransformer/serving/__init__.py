"""Serving models over HTTP: dynamic batching, a bounded queue, an LRU cache (docs/serving.md).

- :mod:`.batcher`: :class:`DynamicBatcher` (and :class:`Busy`), the server-independent core;
- :mod:`.cache`: :class:`LRUCache`;
- :mod:`.services`: what is computed (embeddings, generation);
- :mod:`.app`: the aiohttp application (``pip install nptransformer[serve]``);
- :mod:`.loadtest`: a bounded load test against a server on this machine.
"""

from .batcher import Busy, DynamicBatcher
from .cache import LRUCache
from .services import EmbeddingService, GenerationRequest, GenerationService, load_service

__all__ = ["Busy", "DynamicBatcher", "LRUCache", "EmbeddingService", "GenerationRequest", "GenerationService",
           "load_service"]
