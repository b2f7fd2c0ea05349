"""Thumbnails: a small WebP of every indexed image, kept in the published folder so that
results still show their image after the original URL dies (about 28% of DataComp's URLs were
dead when the reference ran).

``output_dir/thumbnails/part-NNNNN.parquet`` (uid, thumbnail) is aligned row for row with
``data/part-NNNNN.parquet`` and therefore with ``id_mapping/`` (faiss id i = row i of the
concatenated shards); `thumbnail` is null where no image was found. The write step makes them
from the download step's image shards (`write_thumbnails`); `Thumbnails` reads them by faiss id.
Small row groups keep one lookup to one small read.
"""

from __future__ import annotations

import bisect
import functools
import io as _io
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clip_index import io, schema

log = logging.getLogger(__name__)

THUMBNAILS_DIR = "thumbnails"
THUMBNAIL = "thumbnail"
THUMBNAIL_SCHEMA = pa.schema([pa.field(schema.UID, pa.string(), nullable=False),
                              pa.field(THUMBNAIL, pa.binary())])
MEDIA_TYPE = "image/webp"
ROW_GROUP_ROWS = 64  # one lookup reads one row group: 64 × a few kB


@dataclass(frozen=True)
class ThumbnailConfig:
    """size_px: the long side of a thumbnail in pixels (0 = make none); quality: WebP quality
    (1..100). workers: processes making them (0 = one per core)."""

    size_px: int = 128
    quality: int = 75
    workers: int = 0

    def validate(self) -> None:
        if self.size_px != 0 and not 16 <= self.size_px <= 1024:
            raise ValueError(f"thumbnail_px={self.size_px}: expected 0 (none) or 16..1024 "
                             "pixels")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"thumbnail quality={self.quality}: expected 1..100")


def make_thumbnail(image: bytes, size_px: int, quality: int = 75) -> bytes:
    """A WebP of `image` whose long side is at most `size_px` (never upscaled). JPEGs are
    decoded at a reduced scale (`draft`), which makes decoding a 256 px image ~4x cheaper."""
    from PIL import Image

    with Image.open(_io.BytesIO(image)) as opened:
        opened.draft("RGB", (size_px, size_px))
        img = opened.convert("RGB")
    img.thumbnail((size_px, size_px))
    buf = _io.BytesIO()
    img.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def write_thumbnails(output_dir: str, image_dirs: list[str],
                     config: ThumbnailConfig) -> dict[str, int]:
    """Write ``output_dir/thumbnails/part-NNNNN.parquet`` for every ``data/`` shard; returns
    counts (rows, thumbnails, missing, bytes)."""
    config.validate()
    for stale in io.list_shards(io.join(output_dir, THUMBNAILS_DIR)):
        fs, path = io.filesystem(stale)
        fs.rm(path)
    totals = {"thumbnail_rows": 0, "thumbnails": 0, "thumbnails_missing": 0,
              "thumbnail_bytes": 0}
    if config.size_px == 0:
        return totals
    # the download step's finished shards (stats file written), wherever its tasks put them
    folders = io.complete_shards(image_dirs)
    jobs = [(path, _image_path(folders, io.shard_index(path)), output_dir, config)
            for path in io.list_shards(io.join(output_dir, schema.DATA_DIR))]
    workers = min(len(jobs), config.workers or os.cpu_count() or 1)
    if workers <= 1:
        results = [_thumbnail_shard(job) for job in jobs]
    else:  # forked workers: fsspec resets its event loop and locks after a fork (gs:// is safe)
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_thumbnail_shard, jobs))
    for result in results:
        for key, value in result.items():
            totals[key] += value
    log.info("write: %d thumbnails (%d rows without one), %.1f kB each on average",
             totals["thumbnails"], totals["thumbnails_missing"],
             totals["thumbnail_bytes"] / max(totals["thumbnails"], 1) / 1e3)
    return totals


def _image_path(folders: dict[int, str], shard: int) -> str | None:
    folder = folders.get(shard)
    return None if folder is None else io.join(folder, io.shard_name(shard))


def _thumbnail_shard(job: tuple[str, str | None, str, ThumbnailConfig]) -> dict[str, int]:
    data_path, image_path, output_dir, config = job
    uids = io.read_parquet(data_path, [schema.UID]).column(schema.UID)
    wanted = set(uids.to_pylist())
    thumbs: dict[str, bytes] = {}
    if image_path is not None and wanted:
        fs, fs_path = io.filesystem(image_path)
        with fs.open(fs_path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(
                    batch_size=512, columns=[schema.UID, schema.STATUS, schema.IMAGE]):
                keep = pc.and_(pc.equal(batch.column(schema.STATUS), "success"),
                               pc.is_in(batch.column(schema.UID),
                                        value_set=pa.array(sorted(wanted), pa.string())))
                for row in batch.filter(keep).to_pylist():
                    try:
                        thumbs[row[schema.UID]] = make_thumbnail(row[schema.IMAGE],
                                                                 config.size_px, config.quality)
                    except (OSError, ValueError) as exc:  # decoration: the row stays indexed
                        log.warning("write: no thumbnail for %s: %s", row[schema.UID], exc)
    elif image_path is None:
        log.warning("write: no image shard for %s: its rows have no thumbnails", data_path)
    column = [thumbs.get(uid) for uid in uids.to_pylist()]
    table = pa.table([uids, pa.array(column, pa.binary())], schema=THUMBNAIL_SCHEMA)
    out = io.join(output_dir, THUMBNAILS_DIR, posixpath_name(data_path))
    # WebP is compressed already; each write makes one row group of ROW_GROUP_ROWS rows
    with io.AtomicParquetWriter(out, THUMBNAIL_SCHEMA,
                                {schema.UID: "zstd", THUMBNAIL: "none"}) as writer:
        for lo in range(0, max(table.num_rows, 1), ROW_GROUP_ROWS):
            writer.write(table.slice(lo, ROW_GROUP_ROWS))
    made = sum(t is not None for t in column)
    return {"thumbnail_rows": len(column), "thumbnails": made,
            "thumbnails_missing": len(column) - made,
            "thumbnail_bytes": sum(len(t) for t in column if t is not None)}


def posixpath_name(path: str) -> str:
    return io.shard_name(io.shard_index(path))


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
