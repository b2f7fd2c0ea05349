"""Thumbnails: a small WebP of every indexed image, kept in the published folder so that
results still show their image after the original URL dies (about 28% of DataComp's URLs were
dead when the reference ran).

``output_dir/thumbnails/part-NNNNN.parquet`` (uid, thumbnail) is aligned row for row with
``data/part-NNNNN.parquet`` and therefore with ``id_mapping/`` (faiss id i = row i of the
concatenated shards); `thumbnail` is null where none was made. The download step makes them
from the image it has just decoded and resized; the embed step carries them through; the write
step splits them off the data rows (`ThumbnailWriter`); `Thumbnails` reads them by faiss id.
Small row groups keep one lookup to one small read.
"""

from __future__ import annotations

import bisect
import functools
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clip_index import io, schema

log = logging.getLogger(__name__)

THUMBNAILS_DIR = "thumbnails"
THUMBNAIL = schema.THUMBNAIL
THUMBNAIL_SCHEMA = pa.schema([pa.field(schema.UID, pa.string(), nullable=False),
                              pa.field(THUMBNAIL, pa.binary())])
MEDIA_TYPE = "image/webp"
ROW_GROUP_ROWS = 64  # one lookup reads one row group: 64 × a few kB


class ThumbnailWriter:
    """``output_dir/thumbnails/part-NNNNN.parquet`` of one data shard, written beside it row for
    row from the `thumbnail` column the download step made (each write of the data shard's
    rows is one `write` here); counts what it wrote."""

    def __init__(self, output_dir: str, shard: int) -> None:
        self.path = io.join(output_dir, THUMBNAILS_DIR, io.shard_name(shard))
        # WebP is compressed already; row groups of ROW_GROUP_ROWS keep a lookup to one read
        self.writer = io.AtomicParquetWriter(self.path, THUMBNAIL_SCHEMA,
                                             {schema.UID: "zstd", THUMBNAIL: "none"})
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.counts = {"thumbnail_rows": 0, "thumbnails": 0, "thumbnails_missing": 0,
                       "thumbnail_bytes": 0}

    def __enter__(self) -> ThumbnailWriter:
        self.writer.__enter__()
        return self

    def write(self, rows: pa.Table) -> None:
        """`rows` (uid, thumbnail) of the data shard, in its order."""
        table = rows.select([schema.UID, THUMBNAIL]).cast(THUMBNAIL_SCHEMA)
        column = table.column(THUMBNAIL)
        made = table.num_rows - column.null_count
        self.counts["thumbnail_rows"] += table.num_rows
        self.counts["thumbnails"] += made
        self.counts["thumbnails_missing"] += column.null_count
        self.counts["thumbnail_bytes"] += int(pc.sum(pc.binary_length(column)).as_py() or 0)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        self.writer.write(table.slice(0, rows))
        rest = table.slice(rows)
        self.pending, self.pending_rows = [rest], rest.num_rows

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self.pending_rows:
            self._flush(self.pending_rows)
        elif exc_type is None and not self.counts["thumbnail_rows"]:  # a shard of no rows
            self.writer.write(THUMBNAIL_SCHEMA.empty_table())
        self.writer.__exit__(exc_type, exc, tb)


def posixpath_name(path: str) -> str:
    return io.shard_name(io.shard_number(path))


def thumbnails_by_uid(output_dir: str, uids: set[str]) -> dict[str, bytes]:
    """uid → stored thumbnail for the given uids (those without one are left out). Reads the
    id mapping's `uid` column to find each uid's shard, then only those thumbnail shards."""
    found: dict[str, bytes] = {}
    if not uids:
        return found
    value_set = pa.array(sorted(uids), pa.string())
    for path in io.list_shards(io.join(output_dir, schema.ID_MAPPING_DIR)):
        column = io.read_parquet(path, [schema.UID]).column(schema.UID)
        if not pc.any(pc.is_in(column, value_set=value_set)).as_py():
            continue
        thumbs_path = io.join(output_dir, THUMBNAILS_DIR, posixpath_name(path))
        if not io.exists(thumbs_path):
            continue
        table = io.read_parquet(thumbs_path)
        table = table.filter(pc.is_in(table.column(schema.UID), value_set=value_set))
        for uid, body in zip(table.column(schema.UID).to_pylist(),
                             table.column(THUMBNAIL).to_pylist()):
            if body is not None:
                found[uid] = body
    return found


class Thumbnails:
    """The thumbnails of a published folder, by faiss id. `available` is False when the folder
    has none, or when they do not cover the index (written by another run): then every lookup
    gives None and callers show the URL."""

    def __init__(self, output_dir: str, vectors: int) -> None:
        self.paths = io.list_shards(io.join(output_dir, THUMBNAILS_DIR))
        self.starts: list[int] = []  # the faiss id of each shard's first row
        self.groups: list[list[int]] = []  # per shard: the first row of each row group
        total = 0
        for path in self.paths:
            fs, fs_path = io.filesystem(path)
            with fs.open(fs_path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            self.starts.append(total)
            firsts, row = [], 0
            for g in range(meta.num_row_groups):
                firsts.append(row)
                row += meta.row_group(g).num_rows
            self.groups.append(firsts)
            total += meta.num_rows
        self.available = bool(self.paths) and total == vectors
        if self.paths and not self.available:
            log.warning("%s holds %d thumbnails for %d vectors: not used (results link their "
                        "URL)", io.join(output_dir, THUMBNAILS_DIR), total, vectors)
        self._read = functools.lru_cache(maxsize=256)(self._read_group)

    def get(self, i: int, uid: str | None = None) -> bytes | None:
        """The thumbnail of faiss id `i` (None when there is none); with `uid`, None unless the
        stored row is that uid (a guard against misaligned folders)."""
        if not self.available or i < 0:
            return None
        shard = bisect.bisect_right(self.starts, i) - 1
        row = i - self.starts[shard]
        group = bisect.bisect_right(self.groups[shard], row) - 1
        table = self._read(shard, group)
        offset = row - self.groups[shard][group]
        if offset >= table.num_rows:
            return None
        if uid is not None and table.column(schema.UID)[offset].as_py() != uid:
            return None
        value = table.column(THUMBNAIL)[offset].as_py()
        return bytes(value) if value is not None else None

    def _read_group(self, shard: int, group: int) -> pa.Table:
        fs, fs_path = io.filesystem(self.paths[shard])
        with fs.open(fs_path, "rb") as f:
            return pq.ParquetFile(f).read_row_group(group)
