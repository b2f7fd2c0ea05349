"""Download step: fetch every URL of a work unit's shards over HTTP(S), verify, resize and
re-encode the image, and write one row per input row with its status and error.

One asyncio event loop, one aiohttp session (connection reuse, DNS cache, the address guard: see
clip_index/fetch.py and clip_index/guard.py, which query-time image URLs share too) and one decode
pool (decoder.py: a process per core, decoding while the loop fetches) serve the whole unit. Shards
run one after another but overlap: as soon as every row of a shard has started, the next shard's
rows start too, so the slow tail of one shard (hung requests waiting for their retry, slow bodies)
never idles the machine; what an open tail costs is bounded unit-wide, not by counting tails (see
`_Unit`). Each shard keeps its own checkpoint (checkpoint.py: finished rows saved in small chunks,
so a run killed mid-shard resumes where it stopped, every row exactly once), its parquet file and
its stats file, written when its last row is done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema
from clip_index.config import DownloadConfig
from clip_index.download import vips
from clip_index.download.checkpoint import ROW, ShardCheckpoint
from clip_index.download.decoder import DecodePool, DecoderUnavailable
from clip_index.download.memory import reuse_freed_memory, trim_if_above
from clip_index.download.resize import ProcessedImage, image_changed
from clip_index.fetch import Fetcher
from clip_index.guard import GuardedResolver
from clip_index.schema import RowError, Status
from clip_index.stats import Progress, ShardStats, UnitResult, check_failure_rate
from clip_index.units import UnitRecord

log = logging.getLogger(__name__)

# zstd for every column but the images: JPEG/PNG/WebP bytes do not compress, so spend no CPU
_COMPRESSION = {name: "none" if name in (schema.IMAGE, schema.THUMBNAIL) else "zstd"
                for name in schema.IMAGES_SCHEMA.names}
_DNS_CACHE_S = 300
_DNS_THREADS = 64  # getaddrinfo runs in threads: the default pool (cores + 4) starves on DNS
_ROWS_QUEUED_PER_REQUEST = 16  # rows started (most waiting for their host) per request slot
_SHARDS_FINISHING = 2  # shards reading their chunks back into parquet at once
_RECORD_BYTES = 512  # a finished record's memory besides its image (dict, uid, URL, caption)


def shard_metadata(stats: ShardStats) -> dict[str, Any]:
    """The shard's stats as JSON-able values, with images/s (successes per second)."""
    meta = stats.as_dict()
    meta["images_per_s"] = round(stats.successes / stats.seconds, 2) if stats.seconds else 0.0
    return meta


@dataclass
class _Job:
    """One shard to download: its URL file, its output file and (for a unit) its stats file."""

    input_path: str
    output_path: str
    shard: int
    stats_path: str | None = None


def run_download(urls_dir: str, shards: Sequence[int], output_dir: str,
                 config: DownloadConfig) -> UnitResult:
    """Download URL shards `shards` of `urls_dir` (a task's work unit) into
    ``output_dir/part-NNNNN.parquet`` + ``part-NNNNN_stats.json`` each, on one event loop,
    session and decode pool, consecutive shards overlapping (see the module docstring).

    The shard is the unit of resume: one whose stats file exists is complete and is skipped (a
    retried task redoes only what it had not finished); one killed midway resumes from its
    checkpoint. The failure rate is checked over the whole unit once every shard is written.
    """
    config.validate()
    start = time.monotonic()
    if not shards:  # a pipeline unit past the dataset's last shard: nothing to do
        log.info("download: no shards in this work unit (the dataset has fewer shards than "
                 "the pipeline has download tasks)")
    results: dict[int, ShardStats] = {}
    jobs: list[_Job] = []
    for shard in dict.fromkeys(int(s) for s in shards):
        stats = _finished(output_dir, shard)
        if stats is not None:
            results[shard] = stats
        else:
            jobs.append(_Job(io.join(urls_dir, io.shard_name(shard)),
                             io.join(output_dir, io.shard_name(shard)), shard,
                             io.join(output_dir, io.stats_name(shard))))
    for job, stats in zip(jobs, _run_jobs(jobs, config), strict=True):
        results[job.shard] = stats
    done = [results[shard] for shard in dict.fromkeys(int(s) for s in shards)]
    check_failure_rate(done, config.max_failure_rate, "download")
    if io.exists(io.join(urls_dir, schema.MANIFEST)):  # a load step's folder (not a bench's)
        UnitRecord.of_urls(urls_dir, shards).write(output_dir)
    return UnitResult(output_dir, done, time.monotonic() - start)


def _finished(output_dir: str, shard: int) -> ShardStats | None:
    """The stats of a shard that needs no download: complete (skipped), or written but killed
    before its stats (counted again, its stats written now); None when it must be downloaded."""
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
        io.write_json(stats_path, shard_metadata(stats))
        return stats
    return None


def download_shard(input_path: str, output_path: str, config: DownloadConfig,
                   shard: int = 0) -> ShardStats:
    """Download every row of one URL parquet file into one image parquet file (atomic); no
    stats file (see `run_download` for units).

    Rows already checkpointed by an earlier, interrupted run of the same output are not
    fetched again. The stats count every row of the output, resumed ones included; `seconds`
    is this run's time.
    """
    config.validate()
    return _run_jobs([_Job(input_path, output_path, shard)], config)[0]


def _run_jobs(jobs: list[_Job], config: DownloadConfig) -> list[ShardStats]:
    if not jobs:
        return []
    stats = asyncio.run(_download_unit(jobs, config))
    release_memory()
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


async def _download_unit(jobs: list[_Job], config: DownloadConfig) -> list[ShardStats]:
    """Every job's rows on one loop, session and decode pool; a job's rows start once the
    previous job's have all started (see `_Unit` for what bounds the shards left open)."""
    reuse_freed_memory()
    if config.image_decoder != "pillow":
        vips.warn_if_unavailable()  # once per unit, here rather than in every worker
    loop = asyncio.get_running_loop()
    dns_threads = concurrent.futures.ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="dns")
    loop.set_default_executor(dns_threads)
    unit = _Unit(config)
    connector = aiohttp.TCPConnector(
        limit=config.concurrency, limit_per_host=config.per_host_concurrency,
        ttl_dns_cache=_DNS_CACHE_S, resolver=GuardedResolver(config.allow_private_networks),
    )
    finishing: list[asyncio.Task[ShardStats]] = []
    try:
        async with DecodePool(config) as pool, aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": config.user_agent}, trust_env=False,
        ) as session:
            fetcher = Fetcher(session, config, ready=pool.ready)
            for job in jobs:
                await unit.open_shards.acquire()
                failed = [t for t in finishing if t.done() and t.exception() is not None]
                if failed:
                    break  # e.g. DecoderUnavailable: gathered (and raised) below
                run = _ShardRun(job, config, unit)
                await run.start(fetcher, pool)
                finishing.append(asyncio.create_task(run.finish()))
            return list(await asyncio.gather(*finishing))
    finally:
        for task in finishing:
            task.cancel()
        dns_threads.shutdown(wait=False)


class _Unit:
    """What the open shards of a unit share, and the bounds that make a shard left open cheap.

    Only one shard at a time is starting rows; the others open are tails: every row started,
    some still in flight (a hung request waiting for its retry, a slow body). A tail costs
    (a) its rows in flight, bounded unit-wide by `rows_room`; (b) its finished records (image
    bytes included) waiting for a checkpoint chunk of `checkpoint_rows`, bounded unit-wide by
    `buffered_bytes`: past `max_buffered_bytes` the largest buffer is written out as a short
    chunk; (c) a few small objects (its URL columns are dropped once every row has started, each
    row holding its own values). So the number of tails is not what bounds memory, and the next
    shard opens as soon as the previous one's rows have all started: with a pipeline unit of
    ~40 shards of 10,000 rows, a hung row in each shard's tail (up to 5 + 20 + 20 s of deadlines
    plus backoff) overlaps the next shards' main phase rather than idling the task.
    `shards_in_flight` stays as a cap on open shards (checkpoint handles and such), above a unit's
    shard count by default. Memory held: at most ~2 × max_buffered_bytes of records (buffered,
    or in chunks being written: new rows wait while writes fall behind), the rows in flight,
    and the decode pool's queue; finishing shards read back one chunk at a time, two at once.
    """

    def __init__(self, config: DownloadConfig) -> None:
        self.config = config
        self.open_shards = asyncio.Semaphore(config.shards_in_flight)
        # rows started and not finished, over all open shards: each costs a task (a few KB)
        # while it waits for its host, so the bound is generous: a popular host's queue must
        # not fill it, or the other hosts would idle
        self.rows_room = asyncio.Semaphore(_ROWS_QUEUED_PER_REQUEST * config.concurrency)
        self.finishing = asyncio.Semaphore(_SHARDS_FINISHING)
        self.open: set[_ShardRun] = set()
        self.buffered_bytes = 0  # finished records not yet handed to a chunk write
        self.writing_bytes = 0  # records in chunk writes not yet done
        self._writes_caught_up = asyncio.Event()
        self._writes_caught_up.set()

    def added(self, size_bytes: int) -> None:
        """A finished record of `size_bytes` joined a shard's buffer."""
        self.buffered_bytes += size_bytes
        if self.buffered_bytes > self.config.max_buffered_bytes:
            largest = max(self.open, key=lambda run: run.buffer_bytes)
            largest.flush()

    def writing(self, size_bytes: int) -> None:
        """`size_bytes` of buffered records went into a chunk write."""
        self.buffered_bytes -= size_bytes
        self.writing_bytes += size_bytes
        if self.writing_bytes > self.config.max_buffered_bytes:
            self._writes_caught_up.clear()

    def written(self, size_bytes: int) -> None:
        self.writing_bytes -= size_bytes
        if self.writing_bytes <= self.config.max_buffered_bytes:
            self._writes_caught_up.set()

    async def writes_caught_up(self) -> None:
        """Wait while chunk writes hold more than `max_buffered_bytes` (a slow store)."""
        await self._writes_caught_up.wait()


class _ShardRun:
    """One shard on the unit's loop: its rows, its checkpoint chunks, its stats."""

    def __init__(self, job: _Job, config: DownloadConfig, unit: _Unit) -> None:
        self.job = job
        self.config = config
        self.unit = unit
        self.started = time.monotonic()
        urls = io.read_parquet(job.input_path)
        # Python lists once per shard: indexing an Arrow column and calling as_py() per field
        # per row cost the event loop more than the row's own bookkeeping
        self.uids: list[str] = urls.column(schema.UID).to_pylist()
        self.urls: list[str | None] = urls.column(schema.URL).to_pylist()
        self.captions: list[str | None] = urls.column(schema.CAPTION).to_pylist()
        # the load step's extra columns pass through (each row in flight holds its values)
        extras = schema.extra_fields(urls.schema)
        self.extra_names = [f.name for f in extras]
        self.extras: list[tuple[Any, ...]] = list(zip(
            *(urls.column(n).to_pylist() for n in self.extra_names))) if extras else []
        del urls
        out_schema = schema.images_schema(extras)
        self.checkpoint = ShardCheckpoint(job.output_path, out_schema,
                                          {n: _COMPRESSION.get(n, "zstd") for n in
                                           out_schema.names})
        done = self.checkpoint.done_rows(self.uids)
        if done:
            log.info("download: shard %d resumes: %d of %d rows already done", job.shard,
                     len(done), len(self.uids))
        self.todo = [i for i in range(len(self.uids)) if i not in done]
        self.progress = Progress(f"download shard {job.shard}", len(self.todo))
        # the rows in flight (the loop keeps only weak references to tasks)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.all_started = False
        self.idle = asyncio.Event()  # set once every row has started and finished
        self.error: DecoderUnavailable | None = None
        self.buffer: list[dict[str, Any]] = []
        self.buffer_bytes = 0
        self.writes: list[asyncio.Task[None]] = []
        self.write_lock = asyncio.Lock()

    async def start(self, fetcher: Fetcher, pool: DecodePool) -> None:
        """Start every row (returns once the last one has started), then drop the URL columns:
        each row in flight holds its own values, so a tail costs only its rows in flight."""
        self.unit.open.add(self)
        room = self.unit.rows_room
        for index in self.todo:
            await pool.ready()  # decoding is behind: starting more would only fill memory
            await self.unit.writes_caught_up()
            await room.acquire()
            task = asyncio.create_task(self._one(index, self.uids[index], self.urls[index],
                                                 self.captions[index], fetcher, pool,
                                                 self.extras[index] if self.extras else ()))
            self.in_flight.add(task)
            task.add_done_callback(self._row_done)
        self.all_started = True
        self.todo, self.uids, self.urls, self.captions, self.extras = [], [], [], [], []
        if not self.in_flight:
            self.idle.set()

    def _row_done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self.all_started and not self.in_flight:
            self.idle.set()

    async def _one(self, index: int, uid: str, url: str | None, caption: str | None,
                   fetcher: Fetcher, pool: DecodePool, extras: tuple[Any, ...] = ()) -> None:
        try:
            record = await _process_row(url, fetcher, pool)
        except DecoderUnavailable as exc:  # not this row's fault: the shard stops (finish)
            self.error = exc
            return
        finally:
            self.unit.rows_room.release()
        record[schema.UID] = uid
        record[schema.CAPTION] = caption
        if extras:
            record.update(zip(self.extra_names, extras))
            if schema.SOURCE_SHA256 in record:
                record[schema.IMAGE_CHANGED] = image_changed(record.get(schema.SHA256),
                                                             record[schema.SOURCE_SHA256])
        record[ROW] = index
        size = (_RECORD_BYTES + len(record.get(schema.IMAGE) or b"")
                + len(record.get(schema.THUMBNAIL) or b""))
        self.buffer.append(record)
        self.buffer_bytes += size
        self.progress.update()
        self.unit.added(size)  # may flush this or another shard's buffer
        if len(self.buffer) >= self.config.checkpoint_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as the shard's next checkpoint chunk (in the background,
        one chunk at a time, in order)."""
        if self.buffer:
            records, size = self.buffer, self.buffer_bytes
            self.buffer, self.buffer_bytes = [], 0
            self.unit.writing(size)
            self.writes.append(asyncio.create_task(self._write(records, size)))

    async def _write(self, records: list[dict[str, Any]], size_bytes: int) -> None:
        try:
            async with self.write_lock:
                await asyncio.to_thread(self.checkpoint.write, records)
        finally:
            self.unit.written(size_bytes)
        del records
        release_memory()

    async def finish(self) -> ShardStats:
        """Wait for the last row, write the shard (and its stats file, last)."""
        try:
            await self.idle.wait()
            self.flush()  # also after a DecoderUnavailable: the rows done are kept
            await asyncio.gather(*self.writes)
            if self.error is not None:
                raise self.error
            self.progress.close()
            stats = ShardStats(shard=self.job.shard)
            async with self.unit.finishing:  # one chunk in memory per finishing shard
                await asyncio.to_thread(self.checkpoint.finish,
                                        lambda table: _count(stats, table))
            stats.seconds = time.monotonic() - self.started
            if self.job.stats_path is not None:
                await asyncio.to_thread(io.write_json, self.job.stats_path,
                                        shard_metadata(stats))
        finally:
            self.unit.open.discard(self)
            self.unit.open_shards.release()
        log.info("download: shard %d: %d rows, %d ok, %s in %.1fs (%.1f rows/s)",
                 stats.shard, stats.rows, stats.successes, dict(stats.statuses), stats.seconds,
                 stats.rows_per_s)
        return stats


async def _process_row(url: str | None, fetcher: Fetcher, pool: DecodePool) -> dict[str, Any]:
    """The output record of one row, without uid, caption and _row (columns left out are
    null)."""
    try:
        result = await pool.process(await fetcher.fetch(url))
    except RowError as exc:
        return {schema.URL: url, schema.STATUS: exc.status.value, schema.ERROR: str(exc)}
    except DecoderUnavailable:
        raise  # not this row's fault: the shard stops, its checkpoint keeps the rows done
    except Exception as exc:  # never let one row end the shard: record it as data
        log.debug("unexpected error for %s", url, exc_info=True)
        return {schema.URL: url, schema.STATUS: Status.FAILED_TO_DOWNLOAD.value,
                schema.ERROR: f"unexpected: {type(exc).__name__}: {exc}"[:300]}
    if not isinstance(result, ProcessedImage):
        return {schema.URL: url, schema.STATUS: result[0], schema.ERROR: result[1]}
    return {
        schema.URL: url, schema.STATUS: Status.SUCCESS.value, schema.IMAGE: result.data,
        schema.WIDTH: result.width, schema.HEIGHT: result.height,
        schema.ORIGINAL_WIDTH: result.original_width,
        schema.ORIGINAL_HEIGHT: result.original_height, schema.SHA256: result.sha256,
        schema.THUMBNAIL: result.thumbnail,
    }
