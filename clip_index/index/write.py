"""Write step: collect the embedding shards into the published ``output_dir``: ``data/`` (the
embedded rows), ``failed/`` (every other row, with its status and error), ``thumbnails/`` (a
small WebP per embedded row, cut from the download step's image shards; see
`clip_index.index.thumbnails`) and ``manifest.json`` (model, dimension, dtype, counts by
status)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.stats import ShardStats, merge

log = logging.getLogger(__name__)

# What must agree between embedding shards before they can share one index.
MODEL_KEYS = ("model", "pretrained", "dim", "dtype", "normalised", "seed")


@dataclass(frozen=True)
class WriteResult:
    """What the published folder holds."""

    output_dir: str
    manifest: dict[str, Any]
    seconds: float = 0.0

    def as_metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {"output_dir": self.output_dir, **{k: m[k] for k in MODEL_KEYS},
                **{k: m["totals"][k] for k in ("rows", "successes", "failures", "success_rate")},
                "statuses": m["totals"]["statuses"], "errors": m["totals"].get("errors", {}),
                "shards": len(m["shards"]), "bytes": m["totals"].get("bytes", 0),
                **m.get("thumbnails", {}), "seconds": round(self.seconds, 2)}


def find_embedding_shards(embedding_dirs: list[str]) -> list[tuple[int, str, dict[str, Any]]]:
    """(shard, parquet path, stats) for every completed shard in the folders, in shard order."""
    found = []
    for directory in embedding_dirs:
        for path in io.list_shards(directory):
            index = io.shard_index(path)
            stats_path = io.join(directory, io.stats_name(index))
            if not io.exists(stats_path):
                raise RuntimeError(f"embedding shard {path} has no stats file: it is incomplete")
            found.append((index, path, io.read_json(stats_path)))
    found.sort(key=lambda item: item[0])
    indices = [i for i, _, _ in found]
    if len(set(indices)) != len(indices):
        raise RuntimeError(f"embedding shards appear twice: {sorted(indices)}")
    return found


def check_same_model(shards: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
    """The model description shared by all shards; refuses to mix models in one index."""
    models = {tuple(s["model"][k] for k in MODEL_KEYS): s["model"] for _, _, s in shards}
    if len(models) != 1:
        raise RuntimeError(f"embedding shards come from different models: {list(models.values())}"
                           "; an index needs one model, pretrained weights, dim and dtype")
    return next(iter(models.values()))


def run_write(embedding_dirs: list[str], output_dir: str,
              expected_shards: Sequence[int] | None = None,
              image_dirs: list[str] | None = None, thumbnail_px: int = 128) -> WriteResult:
    """Write ``output_dir/data/part-NNNNN.parquet`` (uid, url, caption, embedding) and
    ``output_dir/failed/part-NNNNN.parquet`` for every embedding shard, then, when
    `image_dirs` (the download step's folders, each holding any number of image shards) are
    given and `thumbnail_px` > 0, ``output_dir/thumbnails/part-NNNNN.parquet`` (a WebP of at
    most `thumbnail_px` pixels per embedded row, aligned with data/), then the manifest.

    `expected_shards` (the load step's shards): refuse to publish unless the embedding folders
    hold exactly those, each complete.
    """
    from clip_index.index.thumbnails import ThumbnailConfig, write_thumbnails

    start = time.monotonic()
    thumbnail_config = ThumbnailConfig(size_px=thumbnail_px if image_dirs else 0)
    thumbnail_config.validate()
    io.check_writable(output_dir)
    shards = find_embedding_shards(embedding_dirs)
    if not shards:
        raise RuntimeError(f"no embedding shards in {embedding_dirs}: nothing to write")
    if expected_shards is not None:
        io.require_shards([i for i, _, _ in shards], expected_shards,
                          f"write: the {len(embedding_dirs)} embedding folders")
    model = check_same_model(shards)
    for sub in (schema.DATA_DIR, schema.FAILED_DIR):  # stale parts of an earlier run must go
        for stale in io.list_shards(io.join(output_dir, sub)):
            fs, path = io.filesystem(stale)
            fs.rm(path)
    data_schema = schema.data_schema(int(model["dim"]), str(model["dtype"]))
    for index, path, _ in shards:
        fs, fs_path = io.filesystem(path)
        with fs.open(fs_path, "rb") as f, \
                io.AtomicParquetWriter(io.join(output_dir, schema.DATA_DIR, io.shard_name(index)),
                                       data_schema) as data, \
                io.AtomicParquetWriter(io.join(output_dir, schema.FAILED_DIR,
                                               io.shard_name(index)), schema.FAILED_SCHEMA) as bad:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                ok = pc.equal(batch.column(schema.STATUS), "success")
                data.write(batch.filter(ok).select(data_schema.names))
                bad.write(batch.filter(pc.invert(ok)).select(schema.FAILED_SCHEMA.names))
    thumbs = write_thumbnails(output_dir, image_dirs or [], thumbnail_config)
    totals = merge([ShardStats.from_dict(s) for _, _, s in shards])
    manifest = {**{k: model[k] for k in MODEL_KEYS}, "shards": [i for i, _, _ in shards],
                "totals": totals}
    if thumbnail_config.size_px:
        manifest["thumbnails"] = {"thumbnail_px": thumbnail_config.size_px,
                                  "thumbnail_format": "webp", **thumbs}
    io.write_json(io.join(output_dir, schema.MANIFEST), manifest)
    log.info("write: %d rows, %d embedded, into %s (%.1fs)", totals["rows"], totals["successes"],
             output_dir, time.monotonic() - start)
    return WriteResult(output_dir, manifest, time.monotonic() - start)
