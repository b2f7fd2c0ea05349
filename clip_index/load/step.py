"""Load step: read an image-URL dataset (Hugging Face hub id, or parquet/csv/jsonl files on any
fsspec path) and write it as URL shards plus a manifest."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from clip_index import io, schema
from clip_index.config import LoadConfig

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
_BATCH_ROWS = 8192


@dataclass(frozen=True)
class LoadResult:
    """Where the shards went, how many rows and shards, and what was read."""

    output_dir: str
    rows: int
    shards: list[int]
    source: str
    seconds: float

    def as_metadata(self) -> dict[str, Any]:
        return {"rows": self.rows, "shards": len(self.shards), "source": self.source,
                "seconds": round(self.seconds, 2)}


def is_hub_id(dataset: str) -> bool:
    """True for ``org/name`` strings that are not an existing local path or a URL."""
    return "://" not in dataset and not os.path.exists(dataset) and bool(_HUB_ID.match(dataset))


def run_load(config: LoadConfig, output_dir: str) -> LoadResult:
    """Read `config.dataset` and write ``output_dir/part-NNNNN.parquet`` (uid, url, caption)
    and ``output_dir/manifest.json``. Raises before writing anything on a missing column, an
    empty dataset or a column of values that are not URLs."""
    config.validate()
    io.check_writable(output_dir)
    start = time.monotonic()
    batches = _source_batches(config)
    shards: list[dict[str, Any]] = []
    rows = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    first = True
    out_schema = schema.URLS_SCHEMA
    for batch in _limit(batches, config.limit):
        if batch.num_rows == 0:
            continue
        table = _to_urls(batch, config, row_offset=rows)
        if first:
            _check_urls(table, config.url_column)
            out_schema = table.schema  # the extra columns' types: those of the first rows
            first = False
        elif not table.schema.equals(out_schema):
            table = table.cast(out_schema)
        rows += table.num_rows
        pending.extend(table.to_batches())
        pending_rows += table.num_rows
        while pending_rows >= config.shard_size:
            pending, pending_rows = _flush(output_dir, shards, pending, config.shard_size,
                                           out_schema)
    if pending_rows:
        _flush(output_dir, shards, pending, pending_rows, out_schema)
    if rows == 0:
        raise ValueError(f"dataset {config.dataset!r} has no rows: expected at least one URL")
    io.write_json(
        io.join(output_dir, schema.MANIFEST),
        {"source": config.dataset, "rows": rows, "shards": shards, "config": config.as_dict()},
    )
    seconds = time.monotonic() - start
    log.info("load: %d rows in %d shards from %s (%.1fs); extra columns %s", rows, len(shards),
             config.dataset, seconds, schema.extra_fields(out_schema) and
             [f.name for f in schema.extra_fields(out_schema)])
    return LoadResult(output_dir, rows, [s["index"] for s in shards], config.dataset, seconds)


def plan_shards(urls_dir: str) -> list[int]:
    """The shard indices a load step wrote."""
    manifest = io.read_json(io.join(urls_dir, schema.MANIFEST))
    return [int(s["index"]) for s in manifest["shards"]]


def _flush(
    output_dir: str, shards: list[dict[str, Any]], pending: list[pa.RecordBatch], n: int,
    out_schema: pa.Schema,
) -> tuple[list[pa.RecordBatch], int]:
    table = pa.Table.from_batches(pending, schema=out_schema)
    index = len(shards)
    io.write_parquet_atomic(io.join(output_dir, io.shard_name(index)), table.slice(0, n))
    shards.append({"index": index, "rows": n, "file": io.shard_name(index)})
    rest = table.slice(n)
    return rest.to_batches(), rest.num_rows


def _limit(batches: Iterator[pa.RecordBatch], limit: int) -> Iterator[pa.RecordBatch]:
    seen = 0
    for batch in batches:
        if limit and seen + batch.num_rows >= limit:
            yield batch.slice(0, limit - seen)
            return
        seen += batch.num_rows
        yield batch


def extra_sources(config: LoadConfig, available: list[str]) -> list[str]:
    """The source columns kept beside uid/url/caption: `extra_columns` named, or for "auto"
    DataComp's metadata columns that `available` holds."""
    spec = config.extra_columns.strip()
    if spec == "auto":
        return [c for c in schema.DATACOMP_COLUMNS if c in available]
    return [c.strip() for c in spec.split(",") if c.strip()]


def _wanted_columns(config: LoadConfig, available: list[str]) -> list[str]:
    base = [c for c in (config.id_column, config.url_column, config.caption_column) if c]
    return base + [c for c in extra_sources(config, available) if c not in base]


def _check_columns(available: list[str], config: LoadConfig) -> None:
    for flag, column in (("id_column", config.id_column), ("url_column", config.url_column),
                         ("caption_column", config.caption_column)):
        if column and column not in available:
            hint = " (pass an empty value to do without it)" if flag != "url_column" else ""
            raise ValueError(
                f"{flag}={column!r} is not a column of {config.dataset!r}: expected one of "
                f"{sorted(available)}{hint}"
            )
    missing = [c for c in extra_sources(config, available) if c not in available]
    if missing:
        raise ValueError(f"extra_columns={config.extra_columns!r} names {missing}, not columns "
                         f"of {config.dataset!r}: expected some of {sorted(available)} (or "
                         "'auto' for the DataComp columns present, '' for none)")


def _source_batches(config: LoadConfig) -> Iterator[pa.RecordBatch]:
    if is_hub_id(config.dataset):
        return _hub_batches(config)
    return _file_batches(config)


def check_source(config: LoadConfig) -> None:
    """Check that the dataset exists and has the configured columns, reading no rows (files
    only: a hub dataset's columns are checked on its first rows)."""
    config.validate()
    if not is_hub_id(config.dataset):
        _file_dataset(config)


def _file_dataset(config: LoadConfig) -> pads.Dataset:
    fs, path = io.filesystem(config.dataset)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"dataset {config.dataset!r} was not found: expected a Hugging Face dataset id "
            "(org/name), or a parquet/csv/jsonl file or folder"
        )
    files = sorted(fs.find(path)) if fs.isdir(path) else [path]
    by_format: dict[str, list[str]] = {}
    for f in files:
        fmt = _FORMATS.get(os.path.splitext(f)[1].lower())
        if fmt and not os.path.basename(f).startswith((".", "_")):
            by_format.setdefault(fmt, []).append(f)
    if len(by_format) != 1:
        found = sorted(by_format) or "no readable files"
        raise ValueError(
            f"dataset {config.dataset!r}: expected parquet, csv or jsonl files of one format, "
            f"found {found}"
        )
    ((fmt, paths),) = by_format.items()
    ds = pads.dataset(paths, format=fmt, filesystem=fs)
    _check_columns(ds.schema.names, config)
    return ds


def _file_batches(config: LoadConfig) -> Iterator[pa.RecordBatch]:
    ds = _file_dataset(config)
    return iter(ds.to_batches(columns=_wanted_columns(config, ds.schema.names),
                              batch_size=_BATCH_ROWS))


def _hub_batches(config: LoadConfig) -> Iterator[pa.RecordBatch]:
    """Stream a Hugging Face dataset: a limit of N reads about N rows, not the whole set."""
    import datasets  # heavy; only needed for hub ids

    stream = datasets.load_dataset(config.dataset, split=config.split, streaming=True)
    names = list(stream.features) if stream.features else None
    if names is not None:
        _check_columns(names, config)
        stream = stream.select_columns(_wanted_columns(config, names))
    for rows in stream.iter(batch_size=_BATCH_ROWS):
        if names is None:
            _check_columns(list(rows), config)
            names = list(rows)
        yield pa.RecordBatch.from_pydict({c: rows[c] for c in _wanted_columns(config, names)})


def _to_urls(batch: pa.RecordBatch, config: LoadConfig, row_offset: int) -> pa.Table:
    n = batch.num_rows
    if config.id_column:
        uids = pc.cast(batch.column(config.id_column), pa.string())
    else:  # no id column: the row number is the stable id
        uids = pa.array([f"{row_offset + i:09d}" for i in range(n)], pa.string())
    url = batch.column(config.url_column)
    if not pa.types.is_string(url.type) and not pa.types.is_large_string(url.type):
        raise ValueError(
            f"url_column={config.url_column!r} has type {url.type}: expected strings (URLs)"
        )
    caption = (
        pc.cast(batch.column(config.caption_column), pa.string())
        if config.caption_column
        else pa.nulls(n, pa.string())
    )
    if uids.null_count:
        raise ValueError(f"id_column={config.id_column!r} has {uids.null_count} empty ids "
                         f"near row {row_offset}: expected an id on every row")
    extras = [_extra_column(batch, source) for source in
              extra_sources(config, batch.schema.names)]
    return pa.table([uids, pc.cast(url, pa.string()), caption, *(a for _, a in extras)],
                    schema=schema.urls_schema([pa.field(n, a.type) for n, a in extras]))


def _extra_column(batch: pa.RecordBatch, source: str) -> tuple[str, pa.Array]:
    """(name, values) of a kept source column: face boxes reduced to their count, the known
    DataComp columns cast to compact types, others as the source has them."""
    name = schema.extra_column_name(source)
    values = batch.column(source)
    if source == schema.FACE_BBOXES:
        if pa.types.is_null(values.type):
            return name, pa.nulls(len(values), pa.int32())
        if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
            raise ValueError(f"extra column {source!r} has type {values.type}: expected a list "
                             "of face boxes per row (DataComp's face_bboxes)")
        return name, pc.cast(pc.list_value_length(values), pa.int32())
    wanted = schema.EXTRA_TYPES.get(name)
    if wanted is not None and values.type != wanted:
        try:
            values = pc.cast(values, wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"extra column {source!r} has type {values.type}: expected values "
                             f"that convert to {wanted} ({exc})") from exc
    return name, values


def _check_urls(table: pa.Table, url_column: str) -> None:
    """A column of which no value looks like an http(s) URL is a wrong column, not bad rows."""
    sample = [u for u in table.column(schema.URL).to_pylist()[:1000] if u]
    if not any(urlsplit(u.strip()).scheme in ("http", "https") for u in sample):
        raise ValueError(
            f"url_column={url_column!r} does not hold URLs: expected http(s) URLs, first values "
            f"{sample[:3]!r}"
        )
