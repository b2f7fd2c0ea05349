"""Download step: fetch every URL of a shard over HTTP(S), verify, resize and re-encode the image,
and write one row per input row with its status and error.

Network work runs on one asyncio event loop with one aiohttp session (connection reuse, DNS
cache, per-host limits, the address guard: see fetch.py and guard.py); decoding and resizing run
in a process pool sized to the cores (decoder.py), so both overlap. Finished rows are
checkpointed in small chunks (checkpoint.py): memory is bounded by the in-flight window and one
chunk, and a run killed mid-shard resumes where it stopped, every row ending up exactly once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema
from clip_index.config import DownloadConfig
from clip_index.download.checkpoint import ROW, ShardCheckpoint
from clip_index.download.decoder import DecodePool, DecoderUnavailable
from clip_index.download.fetch import Fetcher
from clip_index.download.guard import GuardedResolver
from clip_index.download.memory import reuse_freed_memory, trim_if_above
from clip_index.download.resize import ProcessedImage
from clip_index.schema import RowError, Status
from clip_index.stats import Progress, ShardStats, UnitResult, check_failure_rate

log = logging.getLogger(__name__)

# zstd for every column but the images: JPEG/PNG/WebP bytes do not compress, so spend no CPU
_COMPRESSION = {name: "none" if name == schema.IMAGE else "zstd"
                for name in schema.IMAGES_SCHEMA.names}
_DNS_CACHE_S = 300
_DNS_THREADS = 64  # getaddrinfo runs in threads: the default pool (cores + 4) starves on DNS


def shard_metadata(stats: ShardStats) -> dict[str, Any]:
    """The shard's stats as JSON-able values, with images/s (successes per second)."""
    meta = stats.as_dict()
    meta["images_per_s"] = round(stats.successes / stats.seconds, 2) if stats.seconds else 0.0
    return meta


def run_download(urls_dir: str, shards: Sequence[int], output_dir: str,
                 config: DownloadConfig) -> UnitResult:
    """Download URL shards `shards` of `urls_dir` (a task's work unit), one after another, into
    ``output_dir/part-NNNNN.parquet`` + ``part-NNNNN_stats.json`` each.

    The shard is the unit of resume: one whose stats file exists is complete and is skipped (a
    retried task redoes only what it had not finished); one killed midway resumes from its
    checkpoint (see `download_shard`). The failure rate is checked over the whole unit once
    every shard is written.
    """
    config.validate()
    if not shards:
        raise ValueError(f"download: no shards given for {urls_dir}: expected a work unit of "
                         "one or more shard numbers")
    start = time.monotonic()
    done = [download_one(urls_dir, int(shard), output_dir, config) for shard in shards]
    check_failure_rate(done, config.max_failure_rate, "download")
    return UnitResult(output_dir, done, time.monotonic() - start)


def download_one(urls_dir: str, shard: int, output_dir: str, config: DownloadConfig) -> ShardStats:
    """One shard of a unit: skipped when complete, counted again when written without its stats,
    else downloaded; its stats file is written last."""
    stats_path = io.join(output_dir, io.stats_name(shard))
    if io.exists(stats_path):
        stats = ShardStats.from_dict(io.read_json(stats_path))
        stats.skipped = True
        log.info("download: shard %d already complete, skipped", shard)
        return stats
    output_path = io.join(output_dir, io.shard_name(shard))
    if io.exists(output_path) and not ShardCheckpoint(output_path, schema.IMAGES_SCHEMA).active:
        # killed after the shard was written but before its stats: count it, do not redo it
        stats = ShardStats(shard=shard)
        for batch in io.iter_parquet_batches(output_path, [schema.STATUS, schema.ERROR,
                                                            schema.IMAGE]):
            _count(stats, pa.Table.from_batches([batch]))
        log.info("download: shard %d was written, its stats were not: counted again", shard)
    else:
        stats = download_shard(io.join(urls_dir, io.shard_name(shard)), output_path, config,
                               shard=shard)
    io.write_json(stats_path, shard_metadata(stats))
    return stats


def download_shard(input_path: str, output_path: str, config: DownloadConfig,
                   shard: int = 0) -> ShardStats:
    """Download every row of one URL parquet file into one image parquet file (atomic).

    Rows already checkpointed by an earlier, interrupted run of the same output are not
    fetched again. The stats count every row of the output, resumed ones included; `seconds`
    is this run's time.
    """
    config.validate()
    start = time.monotonic()
    urls = io.read_parquet(input_path, columns=[schema.UID, schema.URL, schema.CAPTION])
    uids = urls.column(schema.UID).to_pylist()
    checkpoint = ShardCheckpoint(output_path, schema.IMAGES_SCHEMA, _COMPRESSION)
    done = checkpoint.done_rows(uids)
    if done:
        log.info("download: shard %d resumes: %d of %d rows already done", shard, len(done),
                 len(uids))
    todo = [i for i in range(len(uids)) if i not in done]
    if todo:
        asyncio.run(_download_rows(urls, todo, config, checkpoint, shard))
    stats = ShardStats(shard=shard)
    checkpoint.finish(lambda table: _count(stats, table))
    release_memory()
    stats.seconds = time.monotonic() - start
    log.info("download: shard %d: %d rows, %d ok, %s in %.1fs (%.1f rows/s)", shard, stats.rows,
             stats.successes, dict(stats.statuses), stats.seconds, stats.rows_per_s)
    return stats


def release_memory() -> None:
    """Give freed memory back to the OS: Arrow's pool keeps what it freed, and glibc's heap
    fragments under many short-lived image-sized buffers (measured: RSS +250 MB over 3,000
    images with almost nothing live); the heap is trimmed once RSS passes a bound, not at
    every chunk, so freed bodies are reused without faulting their pages in again."""
    pa.default_memory_pool().release_unused()
    trim_if_above()


def _count(stats: ShardStats, table: pa.Table) -> None:
    """Add one chunk of output rows to the stats (statuses, error kinds, image bytes)."""
    for status, error in zip(table.column(schema.STATUS).to_pylist(),
                             table.column(schema.ERROR).to_pylist(), strict=True):
        stats.count(status, error)
    lengths = pc.binary_length(table.column(schema.IMAGE))
    stats.bytes += int(pc.sum(lengths).as_py() or 0)


async def _download_rows(urls: pa.Table, todo: list[int], config: DownloadConfig,
                         checkpoint: ShardCheckpoint, shard: int) -> None:
    reuse_freed_memory()
    loop = asyncio.get_running_loop()
    dns_threads = concurrent.futures.ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="dns")
    loop.set_default_executor(dns_threads)
    progress = Progress(f"download shard {shard}", len(todo))
    window = asyncio.Semaphore(config.concurrency)  # rows in flight (and bodies in memory)
    buffer: list[dict[str, Any]] = []
    writes: list[asyncio.Task[None]] = []
    write_lock = asyncio.Lock()

    async def write(records: list[dict[str, Any]]) -> None:
        async with write_lock:  # one chunk at a time, in order
            await asyncio.to_thread(checkpoint.write, records)
        del records
        release_memory()

    def flush() -> None:
        if buffer:
            writes.append(asyncio.create_task(write(list(buffer))))
            buffer.clear()

    connector = aiohttp.TCPConnector(
        limit=config.concurrency, limit_per_host=config.per_host_concurrency,
        ttl_dns_cache=_DNS_CACHE_S, resolver=GuardedResolver(config.allow_private_networks),
    )
    async with DecodePool(config) as pool, aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": config.user_agent}, trust_env=False,
    ) as session:
        fetcher = Fetcher(session, config)

        async def one(index: int) -> None:
            try:
                record = await _process_row(_row(urls, index), fetcher, pool)
            finally:
                window.release()
            record[ROW] = index
            buffer.append(record)
            progress.update()
            if len(buffer) >= config.checkpoint_rows:
                flush()

        tasks: set[asyncio.Task[None]] = set()
        for index in todo:
            await pool.ready()  # decoding is behind: fetching more would only fill memory
            await window.acquire()
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        flush()
        await asyncio.gather(*writes)
    dns_threads.shutdown(wait=False)
    progress.close()


def _row(urls: pa.Table, index: int) -> dict[str, Any]:
    return {name: urls.column(name)[index].as_py()
            for name in (schema.UID, schema.URL, schema.CAPTION)}


async def _process_row(row: dict[str, Any], fetcher: Fetcher, pool: DecodePool
                       ) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(schema.IMAGES_SCHEMA.names)
    record.update(row)
    try:
        result = await pool.process(await fetcher.fetch(row[schema.URL]))
    except RowError as exc:
        record.update(status=exc.status.value, error=str(exc))
        return record
    except DecoderUnavailable:
        raise  # not this row's fault: the shard stops, its checkpoint keeps the rows done
    except Exception as exc:  # never let one row end the shard: record it as data
        log.debug("unexpected error for %s", row[schema.URL], exc_info=True)
        record.update(status=Status.FAILED_TO_DOWNLOAD.value,
                      error=f"unexpected: {type(exc).__name__}: {exc}"[:300])
        return record
    if not isinstance(result, ProcessedImage):
        record.update(status=result[0], error=result[1])
        return record
    record.update(
        status=Status.SUCCESS.value, image=result.data, width=result.width,
        height=result.height, original_width=result.original_width,
        original_height=result.original_height, sha256=result.sha256,
    )
    return record
