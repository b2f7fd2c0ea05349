"""Write step: collect the embedding shards into the published ``output_dir``: ``data/`` (the
embedded rows), ``failed/`` (every other row, with its status and error), ``thumbnails/`` (the
download step's small WebP of each embedded row; see `clip_index.index.thumbnails`) and
``manifest.json`` (model, dimension, dtype, counts by status)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema
from clip_index.index.thumbnails import THUMBNAILS_DIR, ThumbnailWriter
from clip_index.stats import ShardStats, merge
from clip_index.units import UNIT_FILE, collected_shards

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
            shard = io.shard_number(path)
            stats_path = io.join(directory, io.stats_name(shard))
            if not io.exists(stats_path):
                raise RuntimeError(f"embedding shard {path} has no stats file: it is incomplete")
            found.append((shard, path, io.read_json(stats_path)))
    found.sort(key=lambda item: item[0])
    shards = [s for s, _, _ in found]
    if len(set(shards)) != len(shards):
        raise RuntimeError(f"embedding shards appear twice: {sorted(shards)}")
    return found


def check_same_model(shards: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
    """The model description shared by all shards; refuses to mix models in one index."""
    models = {tuple(s["model"][k] for k in MODEL_KEYS): s["model"] for _, _, s in shards}
    if len(models) != 1:
        raise RuntimeError(f"embedding shards come from different models: {list(models.values())}"
                           "; an index needs one model, pretrained weights, dim and dtype")
    return next(iter(models.values()))


def expected_shards_of(embedding_dirs: Sequence[str]) -> list[int]:
    """Every shard of the dataset, as the embed tasks' unit records name it: what a write of
    their folders must find, whole, before it publishes anything."""
    missing = [d for d in embedding_dirs if not io.exists(io.join(d, UNIT_FILE))]
    if missing:
        raise FileNotFoundError(
            f"write: {missing[:3]} {'have' if len(missing) > 1 else 'has'} no {UNIT_FILE}, so "
            "whether these folders hold the whole dataset cannot be told: give the load "
            "step's folder (clip-index write --urls DIR) or the embed step's own output folders")
    given, dataset = collected_shards(embedding_dirs)
    if dataset is None:
        raise RuntimeError(
            f"write: the unit records of {list(embedding_dirs)[:3]} do not name the dataset's "
            "shards (the embed step read folders no load step planned): give the load step's "
            "folder (clip-index write --urls DIR)")
    return dataset


def run_write(embedding_dirs: Sequence[str], output_dir: str,
              expected_shards: Sequence[int] | None = None) -> WriteResult:
    """Write ``output_dir/data/part-NNNNN.parquet`` (uid, url, caption, the columns carried
    through from the download shards, embedding) and ``output_dir/failed/part-NNNNN.parquet``
    for every embedding shard; where the shards carry the download step's thumbnails,
    ``output_dir/thumbnails/part-NNNNN.parquet`` aligned row for row with data/; then the
    manifest.

    Refuses to publish unless the embedding folders hold exactly the dataset's shards, each
    complete: `expected_shards` (the load step's), or else what the embed tasks' unit records
    name.
    """
    start = time.monotonic()
    io.check_writable(output_dir)
    expected = (list(expected_shards) if expected_shards is not None
                else expected_shards_of(embedding_dirs))
    shards = find_embedding_shards(list(embedding_dirs))
    if not shards:
        raise RuntimeError(f"no embedding shards in {list(embedding_dirs)}: nothing to write")
    io.require_shards([i for i, _, _ in shards], expected,
                      f"write: the {len(embedding_dirs)} embedding folders")
    model = check_same_model(shards)
    for sub in (schema.DATA_DIR, schema.FAILED_DIR, THUMBNAILS_DIR):  # an earlier run's parts
        for stale in io.list_shards(io.join(output_dir, sub)):
            fs, path = io.filesystem(stale)
            fs.rm(path)
    dim, dtype = int(model["dim"]), str(model["dtype"])
    thumbs = {"thumbnail_rows": 0, "thumbnails": 0, "thumbnails_missing": 0,
              "thumbnail_bytes": 0}
    has_thumbnails = False
    for index, path, _ in shards:
        extra = schema.passthrough_fields(io.read_parquet_schema(path))
        data_schema = schema.data_schema(dim, dtype, extra)
        with_thumbs = any(f.name == schema.THUMBNAIL for f in extra)
        has_thumbnails |= with_thumbs
        with contextlib.ExitStack() as stack:
            data = stack.enter_context(io.AtomicParquetWriter(
                io.join(output_dir, schema.DATA_DIR, io.shard_name(index)), data_schema))
            bad = stack.enter_context(io.AtomicParquetWriter(
                io.join(output_dir, schema.FAILED_DIR, io.shard_name(index)),
                schema.FAILED_SCHEMA))
            thumb = (stack.enter_context(ThumbnailWriter(output_dir, index)) if with_thumbs
                     else None)
            for batch in io.iter_parquet_batches(path, batch_rows=4096):
                ok = pc.equal(batch.column(schema.STATUS), "success")
                good = batch.filter(ok)
                data.write(good.select(data_schema.names))
                bad.write(batch.filter(pc.invert(ok)).select(schema.FAILED_SCHEMA.names))
                if thumb is not None:
                    thumb.write(pa.Table.from_batches([good]))
        if thumb is not None:
            for key, value in thumb.counts.items():
                thumbs[key] += value
    totals = merge([ShardStats.from_dict(s) for _, _, s in shards])
    manifest = {**{k: model[k] for k in MODEL_KEYS}, "shards": [i for i, _, _ in shards],
                "totals": totals}
    if has_thumbnails:
        manifest["thumbnails"] = {"thumbnail_format": "webp", **thumbs}
    io.write_json(io.join(output_dir, schema.MANIFEST), manifest)
    log.info("write: %d rows, %d embedded, %d thumbnails, into %s (%.1fs)", totals["rows"],
             totals["successes"], thumbs["thumbnails"], output_dir, time.monotonic() - start)
    return WriteResult(output_dir, manifest, time.monotonic() - start)
