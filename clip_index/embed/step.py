"""Embed step: CLIP image embeddings for a work unit of image shards.

One process per GPU (or one on the CPU) builds the model once and streams all its shards
through one loader (`loader`): JPEGs are decoded and resized on the GPU, or decoded in DataLoader
workers on the CPU path; the next batches are prepared on a side stream while the forward pass
runs; each batch's embeddings stay on the device until the next batch is queued, then a writer
thread turns them into parquet rows. Undecodable images are counted; every input row leaves
with a status; a shard's stats file is written when its last row is, and marks it done.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.decoder import DeviceResize
from clip_index.embed.device import (
    choose_precision,
    default_num_workers,
    resolve_device,
    usable_cpus,
)
from clip_index.embed.loader import (
    META_COLUMNS,
    SHARD,
    DevicePrepare,
    Prefetcher,
    UnitRows,
    make_loader,
    stored_image_bytes,
)
from clip_index.embed.models import ClipModel, check_model_name, check_pretrained, load_model
from clip_index.schema import Status
from clip_index.stats import Progress, ShardStats, UnitResult, check_failure_rate
from clip_index.units import UNIT_FILE, UnitRecord, collected_shards

log = logging.getLogger(__name__)


def default_batch_size(device: str) -> int:
    """Images per forward pass: 256 on a GPU (bf16 ViT-B-32 uses ~2 GB at 256), 64 on CPU
    (measured: CPU throughput is flat from 32 up)."""
    return 256 if device.startswith("cuda") else 64


def embedding_processes(device: str, shards: int) -> int:
    """Processes to embed with: one per visible GPU (at most one per shard), one on the CPU."""
    if not device.startswith("cuda"):
        return 1
    return max(1, min(torch.cuda.device_count(), shards))


def run_embed(image_dirs: Sequence[str], shards: Sequence[int] | None, output_dir: str,
              config: EmbedConfig) -> UnitResult:
    """Embed image shards `shards` (a task's work unit; None: the shards the download tasks
    behind `image_dirs` were given, from their unit records), found in `image_dirs`, into
    ``output_dir/part-NNNNN.parquet`` each.

    The device is resolved first (device='cuda' fails here, saying why, when CUDA is not
    usable); the model is built once per process and only when a shard is left to do; with
    several GPUs each gets its own process and a share of the shards. A shard whose stats file
    (written last) exists is skipped; the failure rate is checked over the unit.
    """
    config.validate()
    check_model_name(config.model)  # before any IO: a typo names the closest models
    check_pretrained(config.model, config.pretrained)
    start = time.monotonic()
    if shards is None:
        shards = collected_shards(image_dirs)[0]
    if not shards:  # a group past the dataset's last shard: nothing to do, no model to load
        log.info("embed: no shards in this work unit (the dataset has fewer shards than the "
                 "pipeline has embed tasks)")
    todo = [int(s) for s in shards if not io.exists(io.join(output_dir, io.stats_name(int(s))))]
    device = resolve_device(config.device) if todo else "cpu"
    processes = embedding_processes(device, len(todo)) if todo else 1
    # the weights first: a tag that cannot be fetched is reported before any image is read
    clip = load_model(config.model, config.pretrained, device, config.seed) \
        if todo and processes == 1 else None
    located = io.complete_shards(image_dirs) if todo else {}
    missing = [s for s in todo if s not in located]
    if missing:
        raise FileNotFoundError(
            f"embed: image shards {missing[:10]}{' ...' if len(missing) > 10 else ''} are not "
            f"complete in any of the {len(image_dirs)} download folders ({list(image_dirs)[:3]}"
            f"{' ...' if len(image_dirs) > 3 else ''}): the download step did not finish them")
    shard_paths = [(s, io.join(located[s], io.shard_name(s))) for s in todo]
    if clip is not None:
        fresh = embed_shards(shard_paths, output_dir, clip, config)
    elif shard_paths:
        fresh = _embed_in_processes(shard_paths, output_dir, config, device, processes)
    else:
        fresh = {}
    done: list[ShardStats] = []
    model: dict[str, Any] = {}
    for shard in (int(s) for s in shards):
        stats_path = io.join(output_dir, io.stats_name(shard))
        if shard in fresh:
            stats = fresh[shard]
        else:
            stats = ShardStats.from_dict(io.read_json(stats_path))
            stats.skipped = True
            log.info("embed: shard %d already complete, skipped", shard)
        model = model or io.read_json(stats_path)["model"]
        done.append(stats)
    check_failure_rate(done, config.max_failure_rate, "embed")
    _record_unit(image_dirs, shards, output_dir)
    return UnitResult(output_dir, done, time.monotonic() - start, extra=model)


def _record_unit(image_dirs: Sequence[str], shards: Sequence[int], output_dir: str) -> None:
    """``unit.json``: the shards this task was given, and the dataset's shards as the download
    tasks' records name them (None where they have none: folders not made by a pipeline)."""
    dataset: list[int] | None = None
    if image_dirs and all(io.exists(io.join(d, UNIT_FILE)) for d in image_dirs):
        dataset = collected_shards(image_dirs)[1]
    UnitRecord([int(s) for s in shards], dataset).write(output_dir)


def embed_shard(input_path: str, output_path: str, clip: ClipModel, config: EmbedConfig,
                shard: int = 0) -> ShardStats:
    """Embed one image parquet into `output_path` (and its stats file beside it)."""
    import posixpath

    out_dir = posixpath.dirname(output_path)
    return embed_shards([(shard, input_path)], out_dir, clip, config,
                        names={shard: posixpath.basename(output_path)})[shard]


def embed_shards(shard_paths: Sequence[tuple[int, str]], output_dir: str, clip: ClipModel,
                 config: EmbedConfig, processes: int = 1,
                 names: dict[int, str] | None = None) -> dict[int, ShardStats]:
    """Embed the image shards `shard_paths` [(shard, path)] through one loader and one model; each
    shard's parquet is closed and its stats file written as soon as its last row is written."""
    batch_size = config.batch_size or default_batch_size(clip.device)
    workers = default_num_workers(clip.device, processes) if config.num_workers < 0 \
        else config.num_workers
    capability = torch.cuda.get_device_capability() if clip.device.startswith("cuda") else None
    precision = choose_precision(config.precision, clip.device, capability)
    split = clip.split
    resize = DeviceResize.from_preprocess(split.pil_transforms) if split else None
    decode = config.decode
    if decode == "auto":
        decode = "device" if clip.device.startswith("cuda") and resize else "cpu"
    if decode == "device" and resize is None:
        raise ValueError(f"decode='device': {clip.name}'s preprocess is not a bicubic resize + "
                         "center crop, which the device decoder reproduces: use decode='cpu'")
    log.info("embed: %d shards on %s, %s, batch %d, %d decode workers, decode on %s",
             len(shard_paths), clip.device, precision, batch_size, workers, decode)
    transform = split.pil_stage if split else clip.preprocess
    sinks = _ShardSinks(shard_paths, output_dir, clip, config, names or {})
    # a row in shared memory: its uint8 pixels at the crop size (decoded in a worker), or its
    # JPEG bytes (decoded on the device)
    size = resize.crop if resize else getattr(getattr(clip.model, "visual", None),
                                              "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    row_bytes = stored_image_bytes(shard_paths) if decode == "device" else 3 * height * width
    loader = make_loader(UnitRows(shard_paths, transform, jpeg_bytes=decode == "device"),
                         batch_size, workers, clip.device.startswith("cuda"),
                         row_bytes or 3 * height * width,
                         sharers=processes)  # one loader per GPU process, one /dev/shm
    prepare = DevicePrepare(clip.device, resize, transform)
    encoder = BatchEncoder(clip, precision)
    with _BackgroundWriter() as writer:
        sinks.open_empty(writer)
        pending: _Pending | None = None
        for batch in Prefetcher(loader, prepare, clip.device):
            vectors = encoder(batch["pixels"]) if batch["good"] else None
            current = _Pending(batch, vectors)  # the copy to the host starts now, no wait
            if pending is not None:  # the previous batch's results: ready by now
                writer.put(pending.rows_writer(sinks))
            pending = current
        if pending is not None:
            writer.put(pending.rows_writer(sinks))
    return sinks.finish()


class BatchEncoder:
    """Encodes image batches into device tensors; on CUDA out-of-memory it halves the batch and
    goes on (and keeps the smaller size for the batches after)."""

    def __init__(self, clip: ClipModel, precision: str = "auto") -> None:
        self.clip = clip
        self.precision = precision
        self.max_batch: int | None = None

    def __call__(self, pixels: Any) -> Any:
        step = min(self.max_batch or len(pixels), len(pixels))
        parts = []
        start = 0
        while start < len(pixels):
            try:
                parts.append(self.clip.encode_tensor(pixels[start:start + step], self.precision))
                start += step
            except torch.cuda.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if step == 1:
                    raise
                step = max(1, step // 2)
                self.max_batch = step
                log.warning("embed: CUDA out of memory, batch size now %d", step)
        return torch.cat(parts) if parts else torch.zeros((0, self.clip.dim))


class _Pending:
    """A batch whose embeddings are being copied to pinned host memory (non-blocking, with an
    event on CUDA); `rows_writer` hands the writer thread a write that waits for the copy."""

    def __init__(self, batch: dict[str, Any], vectors: Any) -> None:
        self.batch, self.event, self.host = batch, None, vectors
        if vectors is not None and vectors.is_cuda:
            self.host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            self.host.copy_(vectors, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def rows_writer(self, sinks: _ShardSinks) -> Callable[[], None]:
        def write() -> None:
            if self.event is not None:
                self.event.synchronize()
            vectors = None if self.host is None else fail_non_finite(self.batch,
                                                                     self.host.numpy())
            sinks.write(self.batch, vectors)
        return write


NON_FINITE = ("non_finite_embedding: NaN or inf in the embedding (a half-precision overflow, "
              "e.g. fp16 on T4/V100/P100); --precision fp32 avoids it")


def fail_non_finite(batch: dict[str, Any], vectors: np.ndarray) -> np.ndarray:
    """The rows of `vectors` (one per `batch["good"]` row) that are finite; a row whose
    embedding has a NaN or inf moves to `batch["bad"]` as failed_to_embed with the reason, so
    it is written and counted, never stored as a vector that matches nothing (or everything).
    Checked on the host, in the writer thread: no synchronisation of the forward pass."""
    finite = np.isfinite(vectors).all(axis=1)
    if finite.all():
        return vectors
    good = batch["good"]
    for i in np.flatnonzero(~finite):
        good[i][schema.STATUS] = Status.FAILED_TO_EMBED.value
        good[i][schema.ERROR] = NON_FINITE
    batch["bad"] = batch["bad"] + [good[i] for i in np.flatnonzero(~finite)]
    batch["good"] = [good[i] for i in np.flatnonzero(finite)]
    log.warning("embed: %d of %d embeddings in a batch are not finite: failed_to_embed",
                int((~finite).sum()), len(finite))
    return vectors[finite]


class _ShardSinks:
    """One atomic parquet writer per shard, opened at the shard's first row and closed at its
    last (the successful rows are counted up front); then the stats file, the "done" marker."""

    def __init__(self, shard_paths: Sequence[tuple[int, str]], output_dir: str, clip: ClipModel,
                 config: EmbedConfig, names: dict[int, str]) -> None:
        self.output_dir, self.config, self.names = output_dir, config, names
        self.model = {**clip.describe(), "dtype": config.dtype, "normalised": True}
        self.paths = dict(shard_paths)
        # the download shards' other columns (sizes, hash, thumbnail, the source's metadata)
        # are carried through: read per shard when it opens, joined to its rows by uid
        extra: dict[str, pa.Field] = {}
        for _, path in shard_paths:
            for f in schema.passthrough_fields(io.read_parquet_schema(path)):
                extra.setdefault(f.name, f)
        self.extra = list(extra.values())
        self.schema = schema.embeddings_schema(clip.dim, config.dtype, self.extra)
        self.vector_type = self.schema.field(schema.EMBEDDING).type
        self.meta_schema = pa.schema([self.schema.field(n) for n in META_COLUMNS])
        self.carried: dict[int, pa.Table] = {}
        self.left: dict[int, int] = {}
        total = 0
        for shard, path in shard_paths:
            status = io.read_parquet(path, columns=[schema.STATUS]).column(schema.STATUS)
            self.left[shard] = pc.sum(pc.equal(status, Status.SUCCESS.value)).as_py() or 0
            total += len(status)
        self.writers: dict[int, io.AtomicParquetWriter] = {}
        self.stats: dict[int, ShardStats] = {}
        # a shard's seconds run from the previous shard's end (or the loader's start) to its
        # own: shards stream one after another, so the sum is the unit's streaming time
        self.last_end = time.monotonic()
        self.progress = Progress(f"embed {len(shard_paths)} shards", total)

    def open_empty(self, writer: _BackgroundWriter) -> None:
        """Shards without a successful row are written at once (the loader never sees them)."""
        for shard, left in self.left.items():
            if left == 0:
                writer.put(functools.partial(self._open_and_finish, shard))

    def _open_and_finish(self, shard: int) -> None:
        self._finish_if_done(self._open(shard))

    def _open(self, shard: int) -> int:
        if shard not in self.writers:
            self.stats[shard] = ShardStats(shard=shard)
            name = self.names.get(shard, io.shard_name(shard))
            self.writers[shard] = io.AtomicParquetWriter(io.join(self.output_dir, name),
                                                         self.schema).__enter__()
            names = {*META_COLUMNS, *(f.name for f in self.extra)}
            path = self.paths[shard]
            present = [n for n in io.read_parquet_schema(path).names if n in names]
            rows = _with_columns(io.read_parquet(path, columns=present), self.schema.remove(
                self.schema.get_field_index(schema.EMBEDDING)))
            ok = pc.equal(rows.column(schema.STATUS), Status.SUCCESS.value)
            self.carried[shard] = rows.filter(ok).select(
                [schema.UID, *(f.name for f in self.extra)])
            failed = rows.filter(pc.invert(ok))
            if failed.num_rows:  # failures of earlier steps stay in the data, with reasons
                self._write(shard, failed.append_column(
                    schema.EMBEDDING, pa.nulls(failed.num_rows, self.vector_type)))
        return shard

    def write(self, batch: dict[str, Any], vectors: np.ndarray | None) -> None:
        """The batch's rows, each into its shard: embedded rows, then undecodable ones."""
        rows_by_shard: dict[int, list[tuple[dict[str, Any], Any]]] = collections.defaultdict(list)
        for i, row in enumerate(batch["good"]):
            rows_by_shard[row[SHARD]].append((row, None if vectors is None else vectors[i]))
        for row in batch["bad"]:
            rows_by_shard[row[SHARD]].append((row, None))
        for shard, rows in rows_by_shard.items():
            self._open(shard)
            self._write(shard, self._table(shard, rows))
            self.left[shard] -= len(rows)
            self._finish_if_done(shard)

    def _table(self, shard: int, rows: list[tuple[dict[str, Any], Any]]) -> pa.Table:
        meta = pa.Table.from_pylist([{k: v for k, v in r.items() if k != SHARD} for r, _ in rows],
                                    schema=self.meta_schema)
        if self.extra:  # the carried columns of these rows, by uid
            carried = self.carried[shard]
            at = pc.index_in(meta.column(schema.UID), value_set=carried.column(schema.UID))
            taken = carried.take(at)
            for f in self.extra:
                meta = meta.append_column(f, taken.column(f.name))
        embedded = [v for _, v in rows if v is not None]
        if len(embedded) == len(rows):
            matrix = np.stack(embedded).astype(self.config.dtype)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)),
                                                        matrix.shape[1]).cast(self.vector_type)
        else:
            vectors = pa.array([None if v is None else v.astype(self.config.dtype).tolist()
                                for _, v in rows], type=self.vector_type)
        return meta.append_column(schema.EMBEDDING, vectors)

    def _write(self, shard: int, table: pa.Table) -> None:
        self.writers[shard].write(table)
        for status, error in zip(table.column(schema.STATUS).to_pylist(),
                                 table.column(schema.ERROR).to_pylist()):
            self.stats[shard].count(status, error)
        self.progress.update(table.num_rows)

    def _finish_if_done(self, shard: int) -> None:
        if self.left[shard] > 0 or shard not in self.writers:
            return
        self.writers.pop(shard).__exit__(None, None, None)
        self.carried.pop(shard, None)
        stats = self.stats[shard]
        now = time.monotonic()
        stats.seconds, self.last_end = now - self.last_end, now
        io.write_json(io.join(self.output_dir, io.stats_name(shard)),
                      {**stats.as_dict(), "model": self.model})
        log.info("embed: shard %d: %d rows, %d embedded", shard, stats.rows, stats.successes)

    def finish(self) -> dict[int, ShardStats]:
        self.progress.close()
        unfinished = [s for s, left in self.left.items() if left > 0 or s not in self.stats]
        for shard in list(self.writers):  # never rename a partial shard into place
            self.writers.pop(shard).__exit__(RuntimeError, None, None)
        if unfinished:
            raise RuntimeError(f"embed: shards {unfinished} did not receive all their rows")
        return self.stats


def _with_columns(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` with every column of `target` (null where it has none), cast to its type."""
    for f in target:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(target.names).cast(target)


class _BackgroundWriter:
    """Runs writes in order on one thread, so writing overlaps the next forward pass; at
    most `depth` writes wait. Leaving the block waits for every write and re-raises the first
    error."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed-writer")
        self.pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()

    def put(self, write: Callable[[], Any]) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(write))

    def __enter__(self) -> _BackgroundWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if exc_type is None:
                    future.result()  # the first write error surfaces here
                else:
                    future.cancel()  # the step failed already: that error is the one to see
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _embed_in_processes(shard_paths: Sequence[tuple[int, str]], output_dir: str,
                        config: EmbedConfig, device: str, processes: int) -> dict[int, ShardStats]:
    """One process per GPU (rank r uses GPU r, with the same precision as any other), each with
    its own loader and a round-robin share of the shards. Replaces DataParallel, which copied
    the weights on every forward and dropped the autocast dtype in its threads (pytorch#125186).
    """
    context = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    results = context.Queue()
    children = []
    for rank in range(processes):
        share = list(shard_paths[rank::processes])
        child = context.Process(target=_child, name=f"embed-{device}-{rank}",
                                args=(rank, share, output_dir, asdict(config), device,
                                      processes, results))
        child.start()
        children.append(child)
    stats: dict[int, ShardStats] = {}
    errors: list[str] = []
    waiting = set(range(processes))
    while waiting:
        try:
            rank, payload, error = results.get(timeout=5)
        except queue.Empty:  # a child killed outright (OOM killer, segfault) reports nothing
            for rank in [r for r in waiting if children[r].exitcode not in (None, 0)]:
                waiting.discard(rank)
                errors.append(f"process {rank}: exited with code {children[rank].exitcode}")
            continue
        waiting.discard(rank)
        if error:
            errors.append(f"process {rank}: {error}")
        else:
            stats.update({int(k): ShardStats.from_dict(v) for k, v in payload.items()})
    for child in children:
        child.join()
    if errors:
        raise RuntimeError("embed: " + "\n".join(errors))
    return stats


def _child(rank: int, shard_paths: list[tuple[int, str]], output_dir: str, config: dict[str, Any],
           device: str, processes: int, results: Any) -> None:
    """One embedding process (spawned): its GPU, its model, its shards."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{rank}] %(name)s: %(message)s")
    try:
        settings = EmbedConfig(**config)
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        else:  # processes on the CPU share its cores
            torch.set_num_threads(max(1, usable_cpus() // processes))
        clip = load_model(settings.model, settings.pretrained, device, settings.seed)
        done = embed_shards(shard_paths, output_dir, clip, settings, processes=processes)
        results.put((rank, {s: st.as_dict() for s, st in done.items()}, None))
    except BaseException as exc:
        results.put((rank, {}, f"{exc!r}\n{traceback.format_exc(limit=5)}"))
