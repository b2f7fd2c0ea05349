"""Index step: an autofaiss index over ``output_dir/data/`` (inner product on L2-normalised
vectors = cosine), the id mapping aligned with the faiss ids, and its quality measured.

Alignment is by construction: one pass over the data shards, in shard order, writes both the
vectors autofaiss reads (``part-NNNNN.npy``, which it reads in that same name order) and the id
mapping rows; faiss id i is row i of that pass. `verify_alignment` re-checks it after the build.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from clip_index import io, schema
from clip_index.config import IndexConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexResult:
    """Where the index went and what it measured (also written as index_infos.json)."""

    output_dir: str
    infos: dict[str, Any]

    def as_metrics(self) -> dict[str, float]:
        """Numeric figures for a KFP Metrics artifact."""
        return {k: float(v) for k, v in self.infos.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


def stage_vectors(output_dir: str, staging: str) -> tuple[int, int]:
    """Write ``staging/part-NNNNN.npy`` (float32) and ``output_dir/id_mapping/`` from one pass
    over the data shards; return (vectors, dim)."""
    for stale in io.list_shards(io.join(output_dir, schema.ID_MAPPING_DIR)):
        fs, path = io.filesystem(stale)
        fs.rm(path)
    offset, dim = 0, 0
    for path in io.list_shards(io.join(output_dir, schema.DATA_DIR)):
        shard = io.shard_index(path)
        table = io.read_parquet(path)
        if table.num_rows == 0:
            continue
        vectors = embeddings_array(table)
        dim = vectors.shape[1]
        np.save(os.path.join(staging, f"part-{shard:05d}.npy"), vectors)
        mapping = pa.table({
            schema.FAISS_ID: pa.array(np.arange(offset, offset + table.num_rows), pa.int64()),
            schema.UID: table.column(schema.UID),
            schema.URL: table.column(schema.URL),
            schema.CAPTION: table.column(schema.CAPTION),
        }, schema=schema.ID_MAPPING_SCHEMA)
        io.write_parquet_atomic(io.join(output_dir, schema.ID_MAPPING_DIR, io.shard_name(shard)),
                                mapping)
        offset += table.num_rows
    return offset, dim


def embeddings_array(table: pa.Table) -> np.ndarray:
    """The `embedding` column as a float32 (rows, dim) array (float16 storage is widened)."""
    column = table.column(schema.EMBEDDING).combine_chunks()
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, dim), dtype=np.float32)


def run_index(output_dir: str, config: IndexConfig) -> IndexResult:
    """Build ``output_dir/faiss/knn.index``, ``output_dir/id_mapping/`` and
    ``output_dir/index_infos.json``; raise with autofaiss's reason when it builds nothing."""
    from autofaiss import build_index

    config.validate()
    manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clip-index-") as tmp:
        staging = os.path.join(tmp, "vectors")
        os.makedirs(staging)
        n, dim = stage_vectors(output_dir, staging)
        if n == 0:
            raise RuntimeError(f"no embeddings in {io.join(output_dir, schema.DATA_DIR)}: "
                               "nothing to index")
        local_index = os.path.join(tmp, schema.INDEX_FILE)
        local_infos = os.path.join(tmp, schema.INDEX_INFOS)
        try:
            index, infos = build_index(
                embeddings=staging, file_format="npy", index_path=local_index,
                index_infos_path=local_infos, metric_type="ip",
                max_index_memory_usage=config.max_index_memory_usage,
                current_memory_available=config.current_memory_available,
                max_index_query_time_ms=config.max_index_query_time_ms,
                index_key=config.index_key or None, verbose=logging.WARNING,
                nb_cores=os.cpu_count(),
            )
        except Exception as exc:
            raise RuntimeError(f"autofaiss could not build the index: {exc}") from exc
        if index is None:
            raise RuntimeError(
                "autofaiss built no index (it returns None when the memory budget cannot hold "
                f"{n} vectors of dim {dim}): raise max_index_memory_usage="
                f"{config.max_index_memory_usage!r} or current_memory_available="
                f"{config.current_memory_available!r}, or pass an index_key")
        build_s = time.monotonic() - start
        quality = measure(index, staging, config.recall_queries)
        verify_alignment(index, staging)
        io.makedirs(io.join(output_dir, schema.FAISS_DIR))
        fs, remote = io.filesystem(io.join(output_dir, schema.FAISS_DIR, schema.INDEX_FILE))
        fs.put_file(local_index, remote)
        size = os.path.getsize(local_index)
    result = {
        "index_key": infos.get("index_key"), "index_param": infos.get("index_param"),
        "metric": "inner_product", "vectors": n, "dim": dim, "size_bytes": size,
        "build_seconds": round(build_s, 2), **quality,
        "model": manifest["model"], "pretrained": manifest["pretrained"],
        "autofaiss": {k: v for k, v in infos.items() if k not in ("index_key", "index_param")},
    }
    io.write_json(io.join(output_dir, schema.INDEX_INFOS), result)
    log.info("index: %s over %d × %d, recall@10 %.3f, %.1fs", result["index_key"], n, dim,
             quality.get("recall_at_10", float("nan")), build_s)
    return IndexResult(output_dir, result)


class StagedVectors:
    """The staged ``part-NNNNN.npy`` files, memory-mapped, addressed by faiss id."""

    def __init__(self, staging: str) -> None:
        files = sorted(f for f in os.listdir(staging) if f.endswith(".npy"))
        self.parts = [np.load(os.path.join(staging, f), mmap_mode="r") for f in files]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, ids: np.ndarray) -> np.ndarray:
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        return np.stack([self.parts[p][i - self.offsets[p]] for p, i in zip(part, ids)])


def measure(index: Any, staging: str, queries: int, k: int = 10) -> dict[str, float]:
    """recall@1 and @k of `index` against exact inner-product search, for `queries` vectors
    sampled from the data, and single-query latency percentiles (ms)."""
    if queries == 0:
        return {}
    vectors = StagedVectors(staging)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    q = np.ascontiguousarray(vectors.take(picks))
    k = min(k, len(vectors))
    exact = _exact_top_k(vectors, q, k)
    _, approx = index.search(q, k)
    recall_k = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)])
    recall_1 = np.mean(approx[:, 0] == exact[:, 0])
    latencies = []
    for row in q[:200]:
        t = time.perf_counter()
        index.search(row[None, :], k)
        latencies.append((time.perf_counter() - t) * 1000)
    return {"recall_at_1": round(float(recall_1), 4),
            f"recall_at_{k}": round(float(recall_k), 4), "recall_queries": len(q),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 3)}


def _exact_top_k(vectors: StagedVectors, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product, one staged shard at a time (bounded memory)."""
    best_scores = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(q), 0), dtype=np.int64)
    for part, start in zip(vectors.parts, vectors.offsets):
        scores = q @ np.asarray(part).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return best_ids


def verify_alignment(index: Any, staging: str, samples: int = 50) -> None:
    """Stored vector i must find itself (or an identical vector) with score ≈ 1 at faiss id i."""
    vectors = StagedVectors(staging)
    picks = np.random.default_rng(1).choice(len(vectors), min(samples, len(vectors)), False)
    q = np.ascontiguousarray(vectors.take(picks))
    _, ids = index.search(q, 10)
    hits = sum(int(i in row or np.allclose(vectors.take(row[:1])[0], v, atol=1e-6))
               for i, v, row in zip(picks, q, ids))
    if hits < 0.5 * len(picks):
        raise RuntimeError(f"index ids do not line up with the id mapping: only {hits} of "
                           f"{len(picks)} stored vectors found themselves")

