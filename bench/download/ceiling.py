"""The serving ceiling: how fast a plain aiohttp client can pull every URL from the local nginx.

One ``ClientSession`` with one keep-alive connector, N concurrent workers, bodies read and
discarded. No decoding, no resizing: whatever the downloaders reach is bounded by this (and on
2 cores this client itself, not nginx, is usually the limit: compare with nginx's CPU time).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ceiling:
    """Result of one pass over the URL list."""

    requests: int
    ok: int
    bytes: int
    wall_s: float
    client_cpu_s: float
    concurrency: int

    @property
    def req_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s if self.wall_s else 0.0


async def _fetch_all(urls: Sequence[str], concurrency: int, timeout_s: float) -> tuple[int, int]:
    for url in urls:
        if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
            raise ValueError(f"refusing to benchmark a non-loopback URL: {url}")
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    ok = 0
    nbytes = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal ok, nbytes
            while True:
                try:
                    url = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    async with session.get(url) as resp:
                        size = 0
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            size += len(chunk)
                        if resp.status == 200:
                            ok += 1
                            nbytes += size
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    logger.debug("ceiling: %s: %r", url, err)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, nbytes


def measure_ceiling(urls: Sequence[str], concurrency: int = 128, timeout_s: float = 30) -> Ceiling:
    """Fetch every URL once (all bytes, bodies discarded) and time it."""
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    ok, nbytes = asyncio.run(_fetch_all(urls, concurrency, timeout_s))
    wall = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result = Ceiling(len(urls), ok, nbytes, wall, cpu, concurrency)
    logger.info("ceiling: %d/%d OK, %.0f req/s, %.0f MB/s, client CPU %.1f s in %.1f s",
                ok, len(urls), result.req_per_s, result.mb_per_s, cpu, wall)
    return result
