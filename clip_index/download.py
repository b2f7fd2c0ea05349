"""Download step: fetch every URL of a shard over HTTP(S), verify, resize and re-encode the image,
and write one row per input row with its status and error.

Network work runs on one asyncio event loop with one aiohttp session (connection reuse, DNS
cache, per-host limits); decoding and resizing run in a process pool sized to the cores, so
both overlap. Rows stream out in completion order; memory is bounded by the in-flight window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import multiprocessing
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pyarrow as pa
from yarl import URL

from clip_index import io, schema
from clip_index.config import DownloadConfig
from clip_index.guard import BlockedURL, GuardedResolver, blocked_reason, check_scheme_and_literal
from clip_index.resize import process_image
from clip_index.schema import RowError, Status
from clip_index.stats import Progress, ShardStats, check_failure_rate

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
_FLUSH_ROWS = 256
_CHUNK_BYTES = 64 * 1024
_MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class DownloadResult:
    """The image shard written for one URL shard, and what happened to its rows."""

    output_dir: str
    shard: int
    stats: ShardStats

    def as_metadata(self) -> dict[str, Any]:
        return self.stats.as_dict()


def run_download(urls_dir: str, shard: int, output_dir: str,
                 config: DownloadConfig) -> DownloadResult:
    """Download URL shard `shard` of `urls_dir` into ``output_dir/part-NNNNN.parquet``.

    A shard whose stats file exists is complete and is skipped (resume after a crash or on a
    re-run); the stats file is written after the shard, so a killed run redoes the whole shard.
    """
    config.validate()
    stats_path = io.join(output_dir, io.stats_name(shard))
    if io.exists(stats_path):
        stats = ShardStats.from_dict(io.read_json(stats_path))
        stats.skipped = True
        log.info("download: shard %d already complete, skipped", shard)
        return DownloadResult(output_dir, shard, stats)
    stats = download_shard(io.join(urls_dir, io.shard_name(shard)),
                           io.join(output_dir, io.shard_name(shard)), config, shard=shard)
    io.write_json(stats_path, stats.as_dict())
    check_failure_rate(stats, config.max_failure_rate, "download")
    return DownloadResult(output_dir, shard, stats)


def download_shard(input_path: str, output_path: str, config: DownloadConfig,
                   shard: int = 0) -> ShardStats:
    """Download every row of one URL parquet file into one image parquet file (atomic)."""
    config.validate()
    urls = io.read_parquet(input_path, columns=[schema.UID, schema.URL, schema.CAPTION])
    rows = urls.to_pylist()
    stats = ShardStats(shard=shard)
    start = time.monotonic()
    workers = config.decode_workers or os.cpu_count() or 1
    # forkserver: never fork a process that already runs the event loop's threads
    ctx = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool, \
            io.AtomicParquetWriter(output_path, schema.IMAGES_SCHEMA) as writer:
        asyncio.run(_download_rows(rows, config, pool, writer, stats))
    stats.seconds = time.monotonic() - start
    log.info("download: shard %d: %d rows, %d ok, %s in %.1fs (%.1f rows/s)", shard, stats.rows,
             stats.successes, dict(stats.statuses), stats.seconds, stats.rows_per_s)
    return stats


async def _download_rows(rows: list[dict[str, Any]], config: DownloadConfig,
                         pool: concurrent.futures.Executor, writer: io.AtomicParquetWriter,
                         stats: ShardStats) -> None:
    progress = Progress(f"download shard {stats.shard}", len(rows))
    buffer: list[dict[str, Any]] = []
    window = asyncio.Semaphore(config.concurrency * 2)  # bounds rows (and bodies) in memory
    connector = aiohttp.TCPConnector(
        limit=config.concurrency,
        limit_per_host=config.per_host_concurrency,
        ttl_dns_cache=300,
        resolver=GuardedResolver(config.allow_private_networks),
    )
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": config.user_agent}, trust_env=False
    ) as session:
        fetcher = Fetcher(session, config)
        loop = asyncio.get_running_loop()

        async def one(row: dict[str, Any]) -> None:
            try:
                record = await _process_row(row, fetcher, pool, loop, config)
            finally:
                window.release()
            buffer.append(record)
            stats.count(record[schema.STATUS], record[schema.ERROR])
            if record[schema.IMAGE] is not None:
                stats.bytes += len(record[schema.IMAGE])
            progress.update()
            if len(buffer) >= _FLUSH_ROWS:
                writer.write(pa.Table.from_pylist(buffer, schema=schema.IMAGES_SCHEMA))
                buffer.clear()

        tasks = set()
        for row in rows:
            await window.acquire()
            task = asyncio.create_task(one(row))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    if buffer:
        writer.write(pa.Table.from_pylist(buffer, schema=schema.IMAGES_SCHEMA))
    progress.close()


async def _process_row(row: dict[str, Any], fetcher: Fetcher, pool: concurrent.futures.Executor,
                       loop: asyncio.AbstractEventLoop, config: DownloadConfig) -> dict[str, Any]:
    record: dict[str, Any] = {name: None for name in schema.IMAGES_SCHEMA.names}
    record.update(uid=row[schema.UID], url=row[schema.URL], caption=row[schema.CAPTION])
    try:
        body = await fetcher.fetch(row[schema.URL])
        image = await loop.run_in_executor(pool, process_image, body, config)
    except RowError as exc:
        record.update(status=exc.status.value, error=str(exc))
        return record
    except Exception as exc:  # never let one row end the shard: record it as data
        log.debug("unexpected error for %s", row[schema.URL], exc_info=True)
        record.update(status=Status.FAILED_TO_DOWNLOAD.value,
                      error=f"unexpected: {type(exc).__name__}: {exc}"[:300])
        return record
    record.update(
        status=Status.SUCCESS.value, image=image.data, width=image.width, height=image.height,
        original_width=image.original_width, original_height=image.original_height,
        sha256=image.sha256,
    )
    return record


class _Retryable(RowError):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(Status.FAILED_TO_DOWNLOAD, message)
        self.retry_after_s = retry_after_s


class Fetcher:
    """Fetches one URL's body with a total deadline per attempt, bounded retries with backoff,
    redirects followed by hand (so every hop passes the address guard) and a size cap."""

    def __init__(self, session: aiohttp.ClientSession, config: DownloadConfig) -> None:
        self.session = session
        self.config = config

    async def fetch(self, url: str | None) -> bytes:
        url = _normalise_url(url)
        last: RowError = RowError(Status.FAILED_TO_DOWNLOAD, "no_attempt")
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(_backoff_s(attempt, last))
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    return await self._attempt(url)
            except _Retryable as exc:
                last = exc
            except RowError:
                raise
            except TimeoutError:
                last = _Retryable(f"timeout: no complete response in {self.config.timeout_s}s")
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                reason = blocked_reason(exc)
                if reason:
                    raise RowError(Status.BLOCKED, reason) from exc
                if isinstance(exc, (aiohttp.InvalidURL, ValueError)):
                    raise RowError(Status.FAILED_TO_DOWNLOAD, f"invalid_url: {exc}") from exc
                last = _Retryable(f"connection_error: {type(exc).__name__}: {exc}"[:300])
        raise last

    async def _attempt(self, url: str) -> bytes:
        visited: set[str] = set()
        current = url
        for _ in range(self.config.max_redirects + 1):
            try:
                check_scheme_and_literal(current, self.config.allow_private_networks)
            except BlockedURL as exc:
                raise RowError(Status.BLOCKED, str(exc)) from exc
            visited.add(current)
            async with self.session.get(URL(current, encoded="%" in current),
                                        allow_redirects=False) as resp:
                if resp.status in REDIRECT_STATUS:
                    current = self._next_hop(resp, visited)
                    continue
                self._check_response(resp)
                return await self._read_body(resp)
        raise RowError(Status.FAILED_TO_DOWNLOAD,
                       f"too_many_redirects: more than max_redirects={self.config.max_redirects}")

    @staticmethod
    def _next_hop(resp: aiohttp.ClientResponse, visited: set[str]) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RowError(Status.FAILED_TO_DOWNLOAD, f"http_{resp.status}: redirect, no Location")
        target = str(resp.url.join(URL(location)))
        if target in visited:
            raise RowError(Status.FAILED_TO_DOWNLOAD, f"redirect_loop: back to {target}"[:300])
        return target

    def _check_response(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status in RETRYABLE_STATUS:
            raise _Retryable(f"http_{resp.status}: {resp.reason}",
                             _retry_after_s(resp.headers.get("Retry-After")))
        if not 200 <= resp.status < 300:
            raise RowError(Status.FAILED_TO_DOWNLOAD, f"http_{resp.status}: {resp.reason}")
        if self.config.respect_opt_out:
            directives = opt_out_directives(resp.headers.getall("X-Robots-Tag", []))
            if directives:
                raise RowError(Status.OPTED_OUT,
                               f"opted_out: X-Robots-Tag {', '.join(sorted(directives))}")
        length = resp.content_length
        if length is not None and length > self.config.max_image_bytes:
            raise RowError(Status.FAILED_TO_DOWNLOAD,
                           f"too_large: Content-Length {length} passes "
                           f"max_image_bytes={self.config.max_image_bytes}")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > self.config.max_image_bytes:
                raise RowError(Status.FAILED_TO_DOWNLOAD,
                               f"too_large: body passes max_image_bytes="
                               f"{self.config.max_image_bytes}")
            chunks.append(chunk)
        if not size:
            raise RowError(Status.FAILED_TO_DOWNLOAD, "empty_body: the server sent no bytes")
        return b"".join(chunks)


def opt_out_directives(values: Iterable[str], agent: str = "clip-index") -> set[str]:
    """The opt-out directives in X-Robots-Tag header values that apply to us: those with no
    user-agent prefix, or prefixed by our agent name (``clip-index: noai``)."""
    found: set[str] = set()
    for value in values:
        scoped: str | None = None
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                scoped, part = (p.strip() for p in part.split(":", 1))
            if part in OPT_OUT_DIRECTIVES and scoped in (None, agent):
                found.add(part)
    return found


def _normalise_url(url: str | None) -> str:
    url = (url or "").strip()
    if not url:
        raise RowError(Status.FAILED_TO_DOWNLOAD, "invalid_url: empty URL")
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https") and not parts.hostname:
        raise RowError(Status.FAILED_TO_DOWNLOAD, f"invalid_url: no host in {url[:200]!r}")
    return url


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff_s(attempt: int, last: RowError) -> float:
    """Retry-After when the server gave one, else exponential backoff with jitter (capped)."""
    hinted = getattr(last, "retry_after_s", None)
    if hinted is not None:
        return min(hinted, _MAX_BACKOFF_S)
    return min(_MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())
