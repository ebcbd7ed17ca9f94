"""The HTTP server on 127.0.0.1: every response equals the direct computation for its input, requests
share forward passes, the cache counts its hits, a full queue answers 503, and shutdown finishes the
requests in flight. CI-sized: tiny random models, a few dozen requests, every loop bounded."""

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the server and its load test need aiohttp (pip install nptransformer[serve])")

from nptransformer import GPT, backend  # noqa: E402
from nptransformer.models import BERT  # noqa: E402
from nptransformer.serving import Busy, DynamicBatcher, LRUCache  # noqa: E402
from nptransformer.serving.loadtest import ServerThread, send_all, summarize, zipf_queries  # noqa: E402
from nptransformer.serving.services import EmbeddingService, GenerationService  # noqa: E402
from nptransformer.textgen import generate_text  # noqa: E402
from nptransformer.tokenizer_bpe import ByteLevelBPETokenizer, bytes_to_unicode  # noqa: E402
from nptransformer.tokenizers import BertTokenizer  # noqa: E402

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings and arrows".split()


def _embedding_service():
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)
    model = BERT(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=32, initializer_range=0.5,
                 generator=backend.Generator(0)).eval()
    return EmbeddingService(model, tokenizer, max_length=32)


def _generation_service():
    table = bytes_to_unicode()
    tokenizer = ByteLevelBPETokenizer({c: i for i, c in enumerate(table.values())}, [])
    model = GPT(vocab_size=256, block_size=40, n_layer=1, n_head=2, d_model=16,
                generator=backend.Generator(1))
    for p in model.parameters():
        p.data[...] *= 8  # peaked distributions: ties between float32 logits are out of reach
    model.eos_token_id = None
    return GenerationService(model, tokenizer)


def _texts(n, seed=0):
    """n different word sequences (so that a swapped response shows)."""
    rng, texts = np.random.default_rng(seed), {}
    while len(texts) < n:
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 12)))
        texts[text] = None
    return list(texts)


def test_embeddings_equal_the_direct_computation_and_share_forwards():
    service = _embedding_service()
    texts = _texts(48)
    direct = np.array([service.compute([t])[0] for t in texts])
    with ServerThread(service, max_batch=8, max_wait_ms=20, cache_size=0) as server:
        result = send_all(server.url + "/v1/embeddings", [{"input": t} for t in texts], concurrency=8)
        batcher = server.batcher
        assert batcher.items == 48 and batcher.largest_batch > 1 and batcher.batches < 48
    assert result["status"] == [200] * 48
    served = np.array([b["data"][0]["embedding"] for b in result["body"]])
    np.testing.assert_allclose(served, direct, atol=1e-5)
    distances = np.linalg.norm(served[:, None] - direct[None], axis=-1)
    assert (np.argmin(distances, axis=1) == np.arange(48)).all()  # nothing swapped between requests
    assert summarize(result)["requests"] == 48


def test_generation_equals_generate_text():
    service = _generation_service()
    rng = np.random.default_rng(2)
    payloads = [{"prompt": f"line {i}: " + "ab"[i % 2] * int(rng.integers(1, 9)), "max_new_tokens": int(n),
                 "stop": ["q"] if i % 3 == 0 else []} for i, n in enumerate(rng.integers(1, 20, size=16))]
    with ServerThread(service, max_batch=6, max_wait_ms=20) as server:
        result = send_all(server.url + "/v1/generate", payloads, concurrency=6)
        bad = send_all(server.url + "/v1/generate", [{"prompt": "x" * 39, "max_new_tokens": 5}, {"prompt": 3}], 1)
    for p, status, body in zip(payloads, result["status"], result["body"]):
        assert status == 200
        assert body["text"] == generate_text(service.model, service.tokenizer, p["prompt"], p["max_new_tokens"],
                                             stop=p["stop"])
    assert bad["status"] == [400, 400]
    assert "context of 40" in bad["body"][0]["error"] and '"prompt"' in bad["body"][1]["error"]


def test_cache_hits_on_a_zipf_stream():
    service = _embedding_service()
    texts = _texts(20, seed=3)
    stream = zipf_queries(20, 60, s=1.2, seed=4)
    with ServerThread(service, cache_size=64) as server:
        result = send_all(server.url + "/v1/embeddings", [{"input": texts[i]} for i in stream], concurrency=1)
        stats = server.cache.stats()
    assert stats["hits"] == 60 - len(set(stream.tolist())) and stats["misses"] == len(set(stream.tolist()))
    assert sum(b["cached"] for b in result["body"]) == stats["hits"]
    direct = {i: service.compute([texts[i]])[0] for i in set(stream.tolist())}
    for i, body in zip(stream, result["body"]):
        np.testing.assert_allclose(body["data"][0]["embedding"], direct[i], atol=1e-5)


class _Gated:
    """A service whose compute waits for ``release``: requests pile up while it is held."""

    kind = "embeddings"

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def compute(self, texts):
        self.entered.set()
        assert self.release.wait(60)
        return [[float(len(t))] for t in texts]


def _health(url):
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.loads(r.read())


def _wait_until(condition, seconds=30.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def _send_in_background(url, payloads, out):
    thread = threading.Thread(target=lambda: out.update(send_all(url, payloads, concurrency=len(payloads))))
    thread.start()
    return thread


def test_a_full_queue_answers_busy():
    service = _Gated()
    with ServerThread(service, max_batch=1, max_wait_ms=0, max_queue=2, cache_size=0) as server:
        url = server.url + "/v1/embeddings"
        first, rest = {}, {}
        one = _send_in_background(url, [{"input": "x"}], first)
        _wait_until(service.entered.is_set)  # the model holds request 1; the queue is empty
        many = _send_in_background(url, [{"input": "x" * (i + 2)} for i in range(7)], rest)
        _wait_until(lambda: _health(server.url)["refused"] == 5)  # 2 queued, 5 refused while the model is held
        assert _health(server.url)["queued"] == 2
        service.release.set()
        one.join(60)
        many.join(60)
    assert first["status"] == [200] and sorted(rest["status"]) == [200, 200, 503, 503, 503, 503, 503]
    for i, (status, body) in enumerate(zip(rest["status"], rest["body"])):
        assert body == ({"data": [{"index": 0, "embedding": [i + 2.0]}], "cached": 0} if status == 200
                        else {"error": "busy", "detail": "2 requests are already waiting"})


def test_shutdown_finishes_the_requests_in_flight():
    service = _Gated()
    server = ServerThread(service, max_batch=1, max_wait_ms=0, max_queue=8, cache_size=0).start()
    out = {}
    sender = threading.Thread(target=lambda: out.update(send_all(
        server.url + "/v1/embeddings", [{"input": "y" * (i + 1)} for i in range(3)], concurrency=3)))
    sender.start()
    _wait_until(lambda: service.entered.is_set() and _health(server.url)["queued"] == 2)
    url = server.url
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.2)
    service.release.set()  # the model finishes only after shutdown began
    stopper.join(60)
    sender.join(60)
    assert out["status"] == [200, 200, 200]
    assert [b["data"][0]["embedding"] for b in out["body"]] == [[1.0], [2.0], [3.0]]
    with pytest.raises(urllib.error.URLError):
        _health(url)


def test_batcher_and_cache_units():
    async def scenario():
        seen = []
        batcher = DynamicBatcher(lambda items: seen.append(list(items)) or [x * 2 for x in items], max_batch=3,
                                 max_wait_ms=50, max_queue=4)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        await batcher.close()
        with pytest.raises(Busy):
            await batcher.submit(9)
        return results, seen

    results, seen = asyncio.run(scenario())
    assert results == [0, 2, 4, 6] and seen == [[0, 1, 2], [3]]
    cache = LRUCache(2)
    for key in "abab":
        cache.get(key) or cache.put(key, key.upper())
    assert cache.stats()["hits"] == 2 and cache.stats()["hit_rate"] == 0.5
    with pytest.raises(ValueError, match="capacity"):
        LRUCache(-1)
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError, match="127.0.0.1"):
        send_all("http://10.0.0.1:80/", [], 1)
