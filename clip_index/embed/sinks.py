"""The embed step's writing side: each batch's embeddings copied off the device without a wait
(`PendingRows`), checked for non-finite values, and written row by row into one atomic parquet
writer per shard with the download shard's other columns carried through (`ShardSinks`), on a
background thread (`BackgroundWriter`) so that writing overlaps the next forward pass."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.loader import META_COLUMNS, SHARD
from clip_index.embed.models import ClipModel
from clip_index.schema import Status
from clip_index.stats import Progress, ShardStats

log = logging.getLogger(__name__)


class PendingRows:
    """A batch whose embeddings are being copied to pinned host memory (non-blocking, with an
    event on CUDA); `rows_writer` hands the writer thread a write that waits for the copy."""

    def __init__(self, batch: dict[str, Any], vectors: Any) -> None:
        self.batch, self.event, self.host = batch, None, vectors
        if vectors is not None and vectors.is_cuda:
            self.host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            self.host.copy_(vectors, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def rows_writer(self, sinks: ShardSinks) -> Callable[[], None]:
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


class ShardSinks:
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

    def open_empty(self, writer: BackgroundWriter) -> None:
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
            rows = with_columns(io.read_parquet(path, columns=present), self.schema.remove(
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


def with_columns(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` with every column of `target` (null where it has none), cast to its type."""
    for f in target:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(target.names).cast(target)


class BackgroundWriter:
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

    def __enter__(self) -> BackgroundWriter:
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
