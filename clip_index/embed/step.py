"""Embed step: CLIP image embeddings for one image shard.

Images are decoded and preprocessed in DataLoader workers (row groups are split between them),
undecodable images are dropped in `collate` and counted, the forward pass runs batched (autocast
on CUDA), embeddings are L2-normalised, and every input row leaves with a status.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import io as _io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.models import ClipModel, check_model_name, check_pretrained, load_model
from clip_index.schema import Status
from clip_index.stats import Progress, ShardStats, UnitResult, check_failure_rate

log = logging.getLogger(__name__)

_META_COLUMNS = [schema.UID, schema.URL, schema.CAPTION, schema.STATUS, schema.ERROR]


def default_batch_size(device: str, gpus: int = 1) -> int:
    """Images per forward pass: 256 per GPU (bf16 ViT-B-32 uses ~2 GB at 256), 64 on CPU
    (throughput is flat from 32 up, REFERENCES §5)."""
    return 256 * max(1, gpus) if device == "cuda" else 64


def default_num_workers(device: str) -> int:
    """DataLoader decode processes: on CUDA all cores but the one feeding the GPU (max 16); on
    CPU none: decoding costs ~2% of the forward pass's CPU, and on a small machine a worker
    process only competes with the forward pass's threads (bench/embed: 94-101% of the
    ceiling without a worker, 80-96% with one, on 2 cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(16, max(1, cores - 1)) if device == "cuda" else 0


def run_embed(image_dirs: Sequence[str], shards: Sequence[int], output_dir: str,
              config: EmbedConfig) -> UnitResult:
    """Embed image shards `shards` (a task's work unit), found in `image_dirs` (the download
    tasks' folders), one after another, into ``output_dir/part-NNNNN.parquet`` each.

    The model is built once for all of them, and only when a shard is left to do. A shard whose
    stats file (written last) exists is skipped; the failure rate is checked over the unit.
    """
    config.validate()
    if not shards:
        raise ValueError("embed: no shards given: expected a work unit of one or more shard "
                         "numbers")
    check_model_name(config.model)  # before any IO: a typo names the closest models
    check_pretrained(config.model, config.pretrained)
    start = time.monotonic()
    todo = [int(s) for s in shards if not io.exists(io.join(output_dir, io.stats_name(int(s))))]
    # the weights first: a tag that cannot be fetched is reported before any image is read
    clip = load_model(config.model, config.pretrained, config.device, config.seed) if todo \
        else None
    located = io.complete_shards(image_dirs) if todo else {}
    missing = [s for s in todo if s not in located]
    if missing:
        raise FileNotFoundError(
            f"embed: image shards {missing[:10]}{' ...' if len(missing) > 10 else ''} are not "
            f"complete in any of the {len(image_dirs)} download folders ({list(image_dirs)[:3]}"
            f"{' ...' if len(image_dirs) > 3 else ''}): the download step did not finish them")
    done: list[ShardStats] = []
    model: dict[str, Any] = {}
    for shard in (int(s) for s in shards):
        stats_path = io.join(output_dir, io.stats_name(shard))
        if shard not in todo:
            previous = io.read_json(stats_path)
            stats = ShardStats.from_dict(previous)
            stats.skipped = True
            model = model or previous["model"]
            log.info("embed: shard %d already complete, skipped", shard)
        else:
            assert clip is not None
            stats = embed_shard(io.join(located[shard], io.shard_name(shard)),
                                io.join(output_dir, io.shard_name(shard)), clip, config,
                                shard=shard)
            model = {**clip.describe(), "dtype": config.dtype, "normalised": True}
            io.write_json(stats_path, {**stats.as_dict(), "model": model})
        done.append(stats)
    check_failure_rate(done, config.max_failure_rate, "embed")
    return UnitResult(output_dir, done, time.monotonic() - start, extra=model)


def embed_shard(input_path: str, output_path: str, clip: ClipModel, config: EmbedConfig,
                shard: int = 0) -> ShardStats:
    """Embed every successful row of one image parquet; pass the other rows through.

    Workers decode and run the PIL part of the preprocess; the main process runs the forward
    pass; a writer thread turns each batch into parquet rows while the next batch is encoded.
    """
    start = time.monotonic()
    stats = ShardStats(shard=shard)
    out_schema = schema.embeddings_schema(clip.dim, config.dtype)
    meta = io.read_parquet(input_path, columns=_META_COLUMNS)
    ok = pc.equal(meta.column(schema.STATUS), Status.SUCCESS.value)
    failed = meta.filter(pc.invert(ok))
    n_ok = meta.num_rows - failed.num_rows
    batch_size = config.batch_size or default_batch_size(clip.device, clip.gpus)
    workers = default_num_workers(clip.device) if config.num_workers < 0 else config.num_workers
    progress = Progress(f"embed shard {shard}", meta.num_rows)
    with io.AtomicParquetWriter(output_path, out_schema) as writer, \
            _BackgroundWriter(writer, stats, progress) as sink:
        if failed.num_rows:  # failures of earlier steps stay in the data, with their reasons
            sink.put(lambda: failed.append_column(
                schema.EMBEDDING, pa.nulls(failed.num_rows, out_schema.field(schema.EMBEDDING).type)
            ))
        if n_ok:
            transform = clip.split.pil_stage if clip.split else clip.preprocess
            loader = torch.utils.data.DataLoader(
                ImageRows(input_path, transform), batch_size=batch_size, num_workers=workers,
                collate_fn=collate, pin_memory=clip.device == "cuda", persistent_workers=False,
            )
            encoder = BatchEncoder(clip, config.precision)
            for batch in loader:
                embeddings = encoder(batch["pixels"]) if batch["good"] else None
                sink.put(functools.partial(_embedded_rows, batch, embeddings, config.dtype,
                                           out_schema))
    stats.seconds = progress.close()
    log.info("embed: shard %d: %d rows, %d embedded in %.1fs (%.1f img/s)", shard, stats.rows,
             stats.successes, time.monotonic() - start,
             stats.successes / max(stats.seconds, 1e-9))
    return stats


class _BackgroundWriter:
    """Builds and writes each batch's rows on one thread, so writing overlaps the next forward
    pass; at most `depth` batches wait. Leaving the block waits for every write and re-raises
    the first error."""

    def __init__(self, writer: io.AtomicParquetWriter, stats: ShardStats, progress: Progress,
                 depth: int = 2) -> None:
        self.writer, self.stats, self.progress, self.depth = writer, stats, progress, depth
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed-writer")
        self.pending: collections.deque[concurrent.futures.Future[None]] = collections.deque()

    def put(self, make_rows: Callable[[], pa.Table]) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write, make_rows))

    def _write(self, make_rows: Callable[[], pa.Table]) -> None:
        rows = make_rows()
        self.writer.write(rows)
        for status, error in zip(rows.column(schema.STATUS).to_pylist(),
                                 rows.column(schema.ERROR).to_pylist()):
            self.stats.count(status, error)
        self.progress.update(rows.num_rows)

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


class ImageRows(torch.utils.data.IterableDataset):
    """Successful rows of an image parquet, decoded and transformed; row groups are divided
    among DataLoader workers. Yields dicts; undecodable images carry an error instead."""

    def __init__(self, path: str, transform: Any) -> None:
        self.path = path
        self.transform = transform  # PIL image -> tensor (3, H, W), float32 or uint8

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from PIL import Image

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        fs, fs_path = io.filesystem(self.path)
        with fs.open(fs_path, "rb") as f:
            parquet = pq.ParquetFile(f)
            for group in range(worker, parquet.num_row_groups, workers):
                table = parquet.read_row_group(group, columns=[*_META_COLUMNS, schema.IMAGE])
                for row in table.to_pylist():
                    if row[schema.STATUS] != Status.SUCCESS.value:
                        continue
                    image = row.pop(schema.IMAGE)
                    try:
                        with Image.open(_io.BytesIO(image)) as img:
                            row["pixels"] = self.transform(img.convert("RGB"))
                    except Exception as exc:  # counted in collate, never a crash
                        row["pixels"] = None
                        row[schema.STATUS] = Status.FAILED_TO_DECODE.value
                        row[schema.ERROR] = f"embed_decode_error: {exc}"[:300]
                    yield row


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decodable images; keep the undecodable rows aside so they are written too."""
    good = [r for r in rows if r["pixels"] is not None]
    bad = [r for r in rows if r["pixels"] is None]
    return {
        "pixels": torch.stack([r.pop("pixels") for r in good]) if good else None,
        "good": good,
        "bad": [{k: v for k, v in r.items() if k != "pixels"} for r in bad],
    }


class BatchEncoder:
    """Encodes image batches; on CUDA out-of-memory it halves the batch and goes on (and keeps
    the smaller size for the batches after)."""

    def __init__(self, clip: ClipModel, precision: str = "auto") -> None:
        self.clip = clip
        self.precision = precision
        self.max_batch: int | None = None

    def __call__(self, pixels: Any) -> np.ndarray:
        step = min(self.max_batch or len(pixels), len(pixels))
        parts = []
        start = 0
        while start < len(pixels):
            try:
                parts.append(self.clip.encode_images(pixels[start:start + step], self.precision))
                start += step
            except torch.cuda.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if step == 1:
                    raise
                step = max(1, step // 2)
                self.max_batch = step
                log.warning("embed: CUDA out of memory, batch size now %d", step)
        return np.concatenate(parts) if parts else np.zeros((0, self.clip.dim), np.float32)


def _embedded_rows(batch: dict[str, Any], embeddings: np.ndarray | None, dtype: str,
                   out_schema: pa.Schema) -> pa.Table:
    """One table for a batch: the embedded rows, then the rows that failed to decode."""
    parts = []
    vector_type = out_schema.field(schema.EMBEDDING).type
    meta_schema = out_schema.remove(out_schema.get_field_index(schema.EMBEDDING))
    if batch["good"] and embeddings is not None:
        embeddings = embeddings.astype(dtype)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)),
                                                    embeddings.shape[1])
        good = pa.Table.from_pylist(batch["good"], schema=meta_schema)
        parts.append(good.append_column(schema.EMBEDDING, vectors.cast(vector_type)))
    if batch["bad"]:
        bad = pa.Table.from_pylist(batch["bad"], schema=meta_schema)
        parts.append(bad.append_column(schema.EMBEDDING, pa.nulls(len(bad), vector_type)))
    return pa.concat_tables(parts)
