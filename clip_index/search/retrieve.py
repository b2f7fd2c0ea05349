"""Retrieve step: the top matches of a Dataset of prompts (or of embeddings) in a published
index, as a Dataset of matches (query, rank, uid, url, caption, score) and the matched images'
URL shards, ready for the download step: how a fine-tuning set is built from an index.

The index and the model are loaded once per task and queries are searched in batches (the
reference re-read the whole index for every prompt).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.config import RetrieveConfig

log = logging.getLogger(__name__)

QUERIES_FILE = "queries.parquet"
MATCHES_FILE = "matches.parquet"


@dataclass(frozen=True)
class RetrieveResult:
    """How many queries, matches and distinct matched images a retrieve task produced."""

    queries: int
    matches: int
    unique_images: int
    seconds: float

    def as_metadata(self) -> dict[str, Any]:
        return {"queries": self.queries, "matches": self.matches,
                "unique_images": self.unique_images, "seconds": round(self.seconds, 2)}


def run_load_queries(source: str, output_dir: str, config: RetrieveConfig) -> int:
    """Read prompts (txt: one a line; csv/jsonl/parquet: `query_column`) or embeddings (.npy, or
    an `embedding_column` of lists) and write ``output_dir/queries.parquet`` (`query`, and
    `embedding` for embedding queries). Returns the number of queries; raises on none."""
    config.validate()
    fs, path = io.filesystem(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"queries {source!r} not found: expected a txt, csv, jsonl, "
                                "parquet or npy file")
    ext = os.path.splitext(path)[1].lower()
    with fs.open(path, "rb") as f:
        if ext == ".npy":
            vectors = np.load(f)
            table = _embedding_table([f"embedding-{i}" for i in range(len(vectors))], vectors)
        elif ext == ".txt":
            lines = [line.strip() for line in f.read().decode("utf-8").splitlines()]
            table = pa.table({schema.QUERY: [line for line in lines if line]})
        else:
            readers = {".parquet": pq.read_table, ".csv": pacsv.read_csv,
                       ".jsonl": pajson.read_json, ".json": pajson.read_json}
            if ext not in readers:
                raise ValueError(f"queries {source!r}: expected a .txt, .csv, .jsonl, .parquet "
                                 "or .npy file")
            table = _from_columns(readers[ext](f), config, source)
    if table.num_rows == 0:
        raise ValueError(f"queries {source!r} holds no queries: expected at least one")
    io.write_parquet_atomic(io.join(output_dir, QUERIES_FILE), table)
    return table.num_rows


def _from_columns(table: pa.Table, config: RetrieveConfig, source: str) -> pa.Table:
    names = table.column_names
    if config.embedding_column in names:
        vectors = np.asarray(table.column(config.embedding_column).to_pylist(), dtype=np.float32)
        labels = ([str(v) for v in table.column(config.query_column).to_pylist()]
                  if config.query_column in names else
                  [f"embedding-{i}" for i in range(table.num_rows)])
        return _embedding_table(labels, vectors)
    if config.query_column not in names:
        raise ValueError(f"query_column={config.query_column!r} is not in {source!r}: columns "
                         f"are {names}; expected prompts or an {config.embedding_column!r} column")
    prompts = [str(p).strip() for p in table.column(config.query_column).to_pylist()
               if p is not None and str(p).strip()]
    return pa.table({schema.QUERY: prompts})


def _embedding_table(labels: list[str], vectors: np.ndarray) -> pa.Table:
    if vectors.ndim != 2:
        raise ValueError(f"query embeddings of shape {vectors.shape}: expected (n, dim)")
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table({schema.QUERY: labels,
                     schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def run_retrieve(queries_dir: str, index_dir: str, matches_dir: str, urls_dir: str,
                 config: RetrieveConfig) -> RetrieveResult:
    """Search every query of ``queries_dir/queries.parquet`` in the index at `index_dir`; write
    ``matches_dir/matches.parquet`` and the distinct matched images as URL shards + manifest in
    `urls_dir` (the load step's layout, so the download step reads them as they are)."""
    from clip_index.index.staging import embeddings_array
    from clip_index.search.filters import Filters
    from clip_index.search.searcher import ClipIndex

    config.validate()
    filters = Filters.parse(config.filters)  # an unknown filter fails before any work
    start = time.monotonic()
    queries = io.read_parquet(io.join(queries_dir, QUERIES_FILE))
    index = ClipIndex(index_dir, mmap=config.mmap)
    selection = index.selection(filters)  # a column the index lacks fails before the model
    if selection is not None:
        log.info("retrieve: filters %s keep %d of %d images", filters.as_dict(),
                 selection.count, len(index))
    labels = queries.column(schema.QUERY).to_pylist()
    vectors = embeddings_array(queries) if schema.EMBEDDING in queries.column_names else None
    rows: list[dict[str, Any]] = []
    for lo in range(0, len(labels), config.batch_size):
        batch = labels[lo:lo + config.batch_size]
        if vectors is None:
            results = index.search_text(batch, config.num_images, config.deduplicate, filters)
        else:
            results = index.search_embedding(vectors[lo:lo + config.batch_size],
                                             config.num_images, config.deduplicate, filters)
        for query, matches in zip(batch, results):
            rows += [{schema.QUERY: query, schema.RANK: rank, schema.UID: r.uid,
                      schema.URL: r.url, schema.CAPTION: r.caption, schema.SCORE: r.score}
                     for rank, r in enumerate(matches, 1)]
    matches = pa.Table.from_pylist(rows, schema=schema.MATCHES_SCHEMA)
    io.write_parquet_atomic(io.join(matches_dir, MATCHES_FILE), matches)
    unique = write_url_shards(matches, urls_dir, config.shard_size)
    seconds = time.monotonic() - start
    log.info("retrieve: %d queries → %d matches, %d distinct images (%.1fs)", len(labels),
             len(rows), unique, seconds)
    return RetrieveResult(len(labels), len(rows), unique, seconds)


def save_match_images(matches_dir: str, index_dir: str, images_dir: str,
                      fetch: Any = None) -> dict[str, int]:
    """Save each distinct matched image into `images_dir` as ``UID.EXT``: the thumbnail kept in
    the index folder (``.webp``) when there is one, so a dead URL still gives its image and a
    live one is not fetched again; else, when `fetch` (a DownloadConfig) is given, the image
    at its URL, fetched as the download step fetches. Returns counts: stored, fetched, failed
    (the reasons are logged)."""
    from clip_index.fetch import fetch_url
    from clip_index.index.thumbnails import thumbnails_by_uid
    from clip_index.schema import RowError

    matches = io.read_parquet(io.join(matches_dir, MATCHES_FILE), [schema.UID, schema.URL])
    urls = dict(zip(matches.column(schema.UID).to_pylist(),
                    matches.column(schema.URL).to_pylist()))
    stored = thumbnails_by_uid(index_dir, set(urls))
    counts = {"stored": 0, "fetched": 0, "failed": 0}
    fs, root = io.filesystem(images_dir)
    fs.makedirs(root, exist_ok=True)
    for uid, url in urls.items():
        name = _safe_name(uid)
        if uid in stored:
            io.write_bytes_atomic(io.join(images_dir, f"{name}.webp"), stored[uid])
            counts["stored"] += 1
            continue
        if fetch is None or not url:
            counts["failed"] += 1
            log.warning("retrieve: %s has no stored thumbnail (and fetching is off)", uid)
            continue
        try:
            body = fetch_url(url, fetch)
        except RowError as exc:  # dead link, blocked address, too large, ...: say which
            counts["failed"] += 1
            log.warning("retrieve: %s: %s", url, exc)
            continue
        io.write_bytes_atomic(io.join(images_dir, f"{name}{_extension(body)}"), body)
        counts["fetched"] += 1
    log.info("retrieve: images of %d matches in %s: %s", len(urls), images_dir, counts)
    return counts


def _safe_name(uid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uid)[:200] or "image"


def _extension(body: bytes) -> str:
    signatures = {b"\xff\xd8": ".jpg", b"\x89PNG": ".png", b"GIF8": ".gif", b"RIFF": ".webp"}
    return next((ext for sig, ext in signatures.items() if body.startswith(sig)), ".img")


def write_url_shards(matches: pa.Table, urls_dir: str, shard_size: int) -> int:
    """The distinct matched images (first seen first) as ``part-NNNNN.parquet`` (uid, url,
    caption) + manifest.json; returns how many."""
    seen: dict[str, int] = {}
    uids = matches.column(schema.UID).to_pylist()
    for row, uid in enumerate(uids):
        seen.setdefault(uid, row)
    table = matches.take(pa.array(list(seen.values()), pa.int64())).select(
        schema.URLS_SCHEMA.names).cast(schema.URLS_SCHEMA)
    shards = []
    for index, lo in enumerate(range(0, max(table.num_rows, 1), shard_size)):
        part = table.slice(lo, shard_size)
        io.write_parquet_atomic(io.join(urls_dir, io.shard_name(index)), part)
        shards.append({"index": index, "rows": part.num_rows, "file": io.shard_name(index)})
    io.write_json(io.join(urls_dir, schema.MANIFEST),
                  {"source": "retrieve", "rows": table.num_rows, "shards": shards})
    return table.num_rows
