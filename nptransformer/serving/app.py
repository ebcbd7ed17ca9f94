"""The HTTP front end (aiohttp, the ``serve`` extra): JSON in, JSON out, batched and cached.

Endpoints:

- ``POST /v1/embeddings`` ``{"input": "text" | ["text", ...]}`` ->
  ``{"data": [{"index": i, "embedding": [...]}, ...], "cached": n}`` (BERT family);
- ``POST /v1/generate`` ``{"prompt": "...", "max_new_tokens": 32, "stop": ["\\n"]}``
  -> ``{"text": "...", "cached": bool}`` (GPT family; greedy);
- ``GET /health`` -> ``{"status": "ok" | "closing", "kind": ..., "queued": n,
  "batches": ..., "items": ..., "largest_batch": ..., "refused": ..., "cache": {...}}``.

A request first looks in the LRU cache; a miss goes through the
:class:`~nptransformer.serving.batcher.DynamicBatcher`. A full queue
answers 503 ``{"error": "busy"}`` with ``Retry-After``; a malformed request
400 with the reason. On shutdown (SIGINT/SIGTERM with :func:`run`, or the
runner's cleanup) the server stops accepting connections, the batcher
finishes every queued request, and only then does the process end.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .batcher import Busy, DynamicBatcher
from .cache import LRUCache
from .services import GenerationRequest, GenerationService

MAX_TEXTS = 256  # texts in one embeddings request


def _aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError:
        raise ImportError("the server needs aiohttp: pip install nptransformer[serve]") from None
    return web


@functools.cache
def app_keys() -> dict[str, Any]:
    """The application's typed keys: ``app[app_keys()["batcher"]]`` and ``["cache"]`` hold the counters."""
    web = _aiohttp()
    return {"batcher": web.AppKey("batcher", DynamicBatcher), "cache": web.AppKey("cache", LRUCache)}


def create_app(service: Any, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
               cache_size: int = 1024) -> Any:
    """An ``aiohttp.web.Application`` serving ``service`` (see :mod:`.services`); :func:`app_keys` reach its
    batcher and cache."""
    web = _aiohttp()
    app = web.Application(client_max_size=1 << 20)
    batcher = DynamicBatcher(service.compute, max_batch, max_wait_ms, max_queue)
    cache = LRUCache(cache_size)
    keys = app_keys()
    app[keys["batcher"]], app[keys["cache"]] = batcher, cache

    async def start(app: Any) -> None:
        batcher.start()

    async def drain(app: Any) -> None:  # on_shutdown: the listening sockets are closed already
        await batcher.close()

    app.on_startup.append(start)
    app.on_shutdown.append(drain)

    async def health(request: Any) -> Any:
        return web.json_response({
            "status": "closing" if batcher._closing else "ok", "kind": service.kind, "queued": batcher.queued,
            "max_queue": batcher.max_queue, "max_batch": batcher.max_batch, "batches": batcher.batches,
            "items": batcher.items, "largest_batch": batcher.largest_batch, "refused": batcher.refused,
            "cache": cache.stats()})

    async def embeddings(request: Any) -> Any:
        body = await _json(request)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS \
                or not all(isinstance(t, str) for t in texts):
            raise _bad(f'"input" must be a string or a list of 1 to {MAX_TEXTS} strings')
        found = [cache.get(("embedding", t)) for t in texts]
        missing = [t for t, v in zip(texts, found) if v is None]
        try:
            computed = await _gather([batcher.submit(t) for t in missing])
        except Busy as error:
            return _busy(str(error))
        fresh = dict(zip(missing, computed))
        for t, v in fresh.items():
            cache.put(("embedding", t), v)
        data = [{"index": i, "embedding": v if v is not None else fresh[t]}
                for i, (t, v) in enumerate(zip(texts, found))]
        return web.json_response({"data": data, "cached": len(texts) - len(missing)})

    async def generate(request: Any) -> Any:
        body = await _json(request)
        prompt, n, stop = body.get("prompt"), body.get("max_new_tokens", 32), body.get("stop", [])
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(prompt, str) or not prompt:
            raise _bad('"prompt" must be a non-empty string')
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _bad(f'"max_new_tokens" must be an integer >= 1, got {n!r}')
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _bad('"stop" must be a non-empty string or a list of them')
        item = GenerationRequest(prompt, n, tuple(stop))
        try:
            service.check(item)
        except ValueError as error:
            raise _bad(str(error)) from None
        text = cache.get(("generate", item))
        if text is not None:
            return web.json_response({"text": text, "cached": True})
        try:
            text = await batcher.submit(item)
        except Busy as error:
            return _busy(str(error))
        cache.put(("generate", item), text)
        return web.json_response({"text": text, "cached": False})

    app.router.add_get("/health", health)
    if isinstance(service, GenerationService):
        app.router.add_post("/v1/generate", generate)
    else:
        app.router.add_post("/v1/embeddings", embeddings)
    return app


async def _gather(awaitables: list) -> list:
    import asyncio

    return list(await asyncio.gather(*awaitables))


async def _json(request: Any) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    return body


def _bad(message: str) -> Exception:
    web = _aiohttp()
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _busy(message: str) -> Any:
    web = _aiohttp()
    return web.json_response({"error": "busy", "detail": message}, status=503, headers={"Retry-After": "1"})


def run(service: Any, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve until SIGINT/SIGTERM, then finish the requests in flight (``options``: :func:`create_app`'s)."""
    web = _aiohttp()
    web.run_app(create_app(service, **options), host=host, port=port, shutdown_timeout=60.0,
                print=lambda message: print(message, flush=True))
