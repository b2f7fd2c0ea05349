"""bench/serve: p50/p99 latency and queries/s of `clip-index serve` at 1, 8 and 32 concurrent
clients on loopback, for text queries (model + index) and embedding queries (index only).

    PYTHONPATH=. python -m bench.serve.run OUTPUT_DIR [--requests 400]

The server runs as its own process (`clip-index serve`, one uvicorn worker); the load comes
from one asyncio process with aiohttp (keep-alive connections). Prints a Markdown fragment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

WORDS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            nonlocal errors
            while not queue.empty():
                body = queue.get_nowait()
                start = time.perf_counter()
                async with session.post(url, data=json.dumps(body)) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "qps": len(latencies) / wall,
            "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="a published clip-index folder")
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--num-images", type=int, default=10)
    args = parser.parse_args()
    from clip_index.search.searcher import ClipIndex

    index = ClipIndex(args.output_dir)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(index), size=args.requests, replace=True)
    vectors = index.embeddings_of(picks)
    texts = [f"a {rng.choice(WORDS)} {rng.choice(SHAPES)} number {i}"
             for i in range(args.requests)]
    kinds = {
        "text": [{"text": t, "num_images": args.num_images} for t in texts],
        "embedding": [{"embedding_input": v.tolist(), "num_images": args.num_images}
                      for v in vectors],
    }
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "clip_index.cli", "serve",
                               f"bench={args.output_dir}", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}/knn-service"
    try:
        import urllib.request

        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        asyncio.run(_load(url, kinds["text"][:20], 1))  # warm-up: model loaded, caches
        rows = []
        load = os.getloadavg()[0]
        for kind, bodies in kinds.items():
            for concurrency in (1, 8, 32):
                result = asyncio.run(_load(url, bodies, concurrency))
                rows.append({"kind": kind, "clients": concurrency, **result})
    finally:
        server.terminate()
        server.wait(10)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average at start "
          f"{load:.1f}; index {Path(args.output_dir).name}: {len(index)} vectors × {index.dim} "
          f"({index.infos.get('index_key')}), model {index.manifest['model']}; "
          f"{args.requests} requests per row, num_images={args.num_images}\n")
    print("| query | clients | p50 ms | p99 ms | q/s | errors |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['clients']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['qps']:.0f} | {r['errors']} |")


if __name__ == "__main__":
    main()
