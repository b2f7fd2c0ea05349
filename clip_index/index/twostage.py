"""Two-stage index build: a compressed faiss first stage (IVF + fast-scan PQ, an HNSW coarse
quantizer for many lists) and the re-rank store (``faiss/rerank_vectors.index``), built within
bounded memory.

Memory: one pass over the data shards writes the id mapping and the re-rank store (one shard
in memory at a time) and keeps a fixed-size random training sample; the first stage trains on
that sample and then adds the store chunk by chunk. Peak memory is the sample + a chunk + the
compressed index, whatever the number of vectors (the full float32 matrix never exists).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.config import IndexConfig
from clip_index.index.rerank import RERANK_FILE, RerankStore, RerankWriter
from clip_index.index.staging import publish_query_files, stage_vectors
from clip_index.index.tune import tune_two_stage

log = logging.getLogger(__name__)

TRAIN_PER_LIST = 40  # training vectors per inverted list (faiss warns below 39)
MIN_TRAIN, MAX_TRAIN = 65_536, 1_048_576  # training sample bounds, vectors
HNSW_QUANTIZER_FROM_LISTS = 8_192  # a flat coarse quantizer costs nlist·dim per query


def first_stage_key(n: int, dim: int) -> str:
    """The first stage for `n` vectors of `dim`: about 2·√n inverted lists (a power of two,
    256–65,536; 1M → 2048, 12.8M → 8192), an HNSW coarse quantizer from 8192 lists (a flat
    one would scan 8192 centroids per query), and fast-scan PQ with 4-bit codes over
    4-dimension sub-vectors (64 bytes per 512-d vector; SIMD table look-ups, so scanning many
    lists stays cheap, which nprobe needs on wide, overlapping clusters). Dims that fast-scan
    PQ cannot split evenly get 8-bit scalar quantisation.

    2·√n rather than the usual 4·√n: k-means costs (training vectors × lists) = 40·nlist²,
    so at 1M, 4096 lists took 110 s of a 3-minute build budget to train and 2048 lists 30 s,
    at the same re-ranked recall for a few more codes scanned per query (BENCHMARKS.md)."""
    nlist = int(2 ** round(math.log2(max(1.0, 2 * math.sqrt(n)))))
    nlist = max(256, min(65_536, nlist, max(1, n // TRAIN_PER_LIST)))
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_FROM_LISTS else f"IVF{nlist}"
    m = dim // 4
    codes = f"PQ{m}x4fs" if dim % 4 == 0 and m % 2 == 0 else "SQ8"
    return f"{coarse},{codes}"


KMEANS_ITERATIONS = 10  # coarse k-means iterations (faiss's default 25 costs 2.5x the time)


def make_first_stage(key: str, dim: int) -> Any:
    """The untrained first stage: inner product (the vectors are normalised), codes of the
    residual to the list centroid (fast-scan PQ defaults to coding the raw vector, which wastes
    its 4-bit codes on what the centroid already says), `KMEANS_ITERATIONS` k-means iterations."""
    import faiss

    index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return index  # a forced first_stage_key without inverted lists
    ivf.by_residual = True
    ivf.cp.niter = KMEANS_ITERATIONS
    return index


def shard_rows(paths: list[str]) -> list[int]:
    """Rows per data shard, from the parquet footers (no data read)."""
    rows = []
    for path in paths:
        fs, fs_path = io.filesystem(path)
        with fs.open(fs_path, "rb") as f:
            rows.append(pq.ParquetFile(f).metadata.num_rows)
    return rows


def stream_and_sample(output_dir: str, store_path: str, dtype: str, train_size: int,
                      n: int, mapping_file: str, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """One pass over the data shards (`n` rows in all): the id mapping (parquet in
    `output_dir`, Arrow in the local `mapping_file`), the re-rank store (normalised rows, in
    shard order: row i is faiss id i) and a uniform random training sample (float32, in id
    order). Returns (sample, vectors, dim)."""
    picks = np.sort(np.random.default_rng(seed).choice(n, min(train_size, n), replace=False))
    state: dict[str, Any] = {"offset": 0, "taken": 0}

    def sink(vectors: np.ndarray) -> None:
        if "writer" not in state:
            state["writer"] = RerankWriter(store_path, n, vectors.shape[1], dtype)
            state["sample"] = np.empty((len(picks), vectors.shape[1]), dtype=np.float32)
        state["writer"].append(vectors)
        start, end = state["offset"], state["offset"] + len(vectors)
        lo, hi = np.searchsorted(picks, [start, end])
        # the sample sees the rows as stored (float16 when the store is), as the index will
        state["sample"][lo:hi] = vectors[picks[lo:hi] - start].astype(dtype).astype(np.float32)
        state["offset"], state["taken"] = end, hi

    count, dim = stage_vectors(output_dir, sink, mapping_file)
    if count != n:
        raise RuntimeError(f"data shards hold {count} embeddings but their footers say {n}: "
                           "a shard changed while it was read")
    state["writer"].close()
    return state["sample"], n, dim


def build_two_stage(output_dir: str, config: IndexConfig) -> dict[str, Any]:
    """Build ``faiss/knn.index`` (first stage, readable by faiss alone) and
    ``faiss/rerank_vectors.index`` in `output_dir` plus the id mapping; tune (nprobe, re-rank
    depth) and measure. Returns the index_infos fields of both stages."""
    import faiss

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clip-index-") as tmp:
        store_path = os.path.join(tmp, RERANK_FILE)
        # the footers give the row count before the pass: the store's shape, the list count
        # and the training sample are fixed before any vector is read
        paths = io.list_shards(io.join(output_dir, schema.DATA_DIR))
        total = sum(shard_rows(paths))
        if total == 0:
            raise RuntimeError(f"no embeddings in {io.join(output_dir, schema.DATA_DIR)}: "
                               "nothing to index")
        key = config.first_stage_key or first_stage_key(total, _dim_of(paths))
        nlist = nlist_of(key)
        train_size = max(MIN_TRAIN, min(MAX_TRAIN, TRAIN_PER_LIST * nlist))
        sample, n, dim = stream_and_sample(output_dir, store_path, config.rerank_dtype,
                                           train_size, total,
                                           os.path.join(tmp, schema.MAPPING_FILE))
        staged_s = time.monotonic() - start
        index = make_first_stage(key, dim)
        log.info("two-stage index: %d × %d staged in %.1fs (peak RSS %.0f MB); training %s on "
                 "%d vectors", n, dim, staged_s, _peak_rss_mb(), key, len(sample))
        index.train(sample)
        del sample
        trained_s = time.monotonic() - start
        store = RerankStore(store_path, n, dim)
        for _, chunk in store.iter_chunks():
            index.add(chunk)
        build_s = time.monotonic() - start
        log.info("two-stage index: trained in %.1fs, added in %.1fs (peak RSS %.0f MB); tuning",
                 trained_s - staged_s, build_s - trained_s, _peak_rss_mb())
        quality: dict[str, Any] = {}
        if config.recall_queries:
            quality = tune_two_stage(index, store, config.recall_queries, config.target_recall,
                                     max_query_time_ms=config.max_index_query_time_ms)
        local_index = os.path.join(tmp, schema.INDEX_FILE)
        faiss.write_index(index, local_index)  # after tuning: the file holds nprobe
        sizes = {name: os.path.getsize(os.path.join(tmp, name))
                 for name in (schema.INDEX_FILE, RERANK_FILE)}
        publish_query_files(output_dir, tmp,
                            [RERANK_FILE, schema.MAPPING_FILE, schema.INDEX_FILE])
    depth = quality.get("rerank_depth", 200)
    return {
        "index_key": key, "index_param": quality.get("index_param", ""),
        "two_stage": True, "rerank_depth": depth,
        "stages": {
            "first": {"what": "compressed candidates (faiss; readable by faiss alone)",
                      "file": f"{schema.FAISS_DIR}/{schema.INDEX_FILE}", "index_key": key,
                      "index_param": quality.get("index_param", ""), "nlist": nlist,
                      "train_vectors": min(train_size, n), "size_bytes": sizes[schema.INDEX_FILE],
                      **{k: v for k, v in quality.items() if k.startswith("first_stage_")}},
            "rerank": {"what": "exact inner products of the first stage's candidates against "
                               "the stored vectors (faiss IndexRefine over a "
                               "memory-mapped fp16 scalar-quantizer or flat index)",
                       "file": f"{schema.FAISS_DIR}/{RERANK_FILE}", "dtype": config.rerank_dtype,
                       "depth": depth, "size_bytes": sizes[RERANK_FILE]},
        },
        "metric": "inner_product", "vectors": n, "dim": dim,
        "size_bytes": sizes[schema.INDEX_FILE], "rerank_size_bytes": sizes[RERANK_FILE],
        "stage_seconds": round(staged_s, 2), "train_seconds": round(trained_s - staged_s, 2),
        "add_seconds": round(build_s - trained_s, 2), "build_seconds": round(build_s, 2),
        **{k: v for k, v in quality.items() if k not in ("index_param", "rerank_depth")},
    }


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB: VmHWM, which starts afresh at exec
    (getrusage's ru_maxrss carries a forking parent's peak over into the child on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def nlist_of(key: str) -> int:
    """The inverted-list count of a factory string ("IVF4096,..." → 4096; 1 when none)."""
    for part in key.split(","):
        if part.startswith("IVF"):
            return int(part[3:].split("_")[0])
    return 1


def _dim_of(paths: list[str]) -> int:
    """The embedding dim of the first non-empty shard (from its schema: no data read)."""
    for path in paths:
        fs, fs_path = io.filesystem(path)
        with fs.open(fs_path, "rb") as f:
            field = pq.ParquetFile(f).schema_arrow.field(schema.EMBEDDING)
        size = getattr(field.type, "list_size", -1)
        if size > 0:
            return int(size)
    raise RuntimeError(f"no fixed-size embedding column in {paths[:1]}: expected the write "
                       "step's data/ shards")
