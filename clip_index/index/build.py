"""Index step: a faiss index over ``output_dir/data/`` (inner product on L2-normalised vectors
= cosine), the id mapping aligned with the faiss ids, its search parameter tuned to a target
recall and its quality measured (index_infos.json, KFP Metrics). Below `two_stage_min_vectors`
vectors (or with an `index_key`) autofaiss builds it, within its memory budgets; from there on the
index has two stages (`clip_index.index.twostage`), which autofaiss and its budgets play no part in.

Alignment is by construction: one pass over the data shards, in shard order, writes both the
vectors the build reads (for autofaiss ``NNNNNNNNN.npy``, which it reads in name order) and the id
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

from clip_index import io, schema
from clip_index.config import IndexConfig
from clip_index.index.columns import remove_column_store, write_column_store
from clip_index.index.staging import npy_folder_sink, publish_query_files, stage_vectors
from clip_index.index.tune import VectorParts, tune_and_measure

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

    def describe_stages(self) -> str:
        """One line naming the index's stages and their settings (KFP Metrics, logs)."""
        i = self.infos
        if not i.get("two_stage"):
            return f"one stage: {i.get('index_key')} ({i.get('index_param') or '-'})"
        first, rerank = i["stages"]["first"], i["stages"]["rerank"]
        return (f"first stage {first['index_key']} ({first['index_param'] or '-'}, "
                f"{first['file']}) proposes {rerank['depth']} candidates; exact re-rank from "
                f"{rerank['file']} ({rerank['dtype']}, memory-mapped)")


class _Collect(logging.Handler):
    """Keeps autofaiss's warnings and errors: it logs why it gave up, then returns None."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


def build_with_autofaiss(staging: str, index_path: str, config: IndexConfig,
                         n: int, dim: int) -> tuple[Any, dict[str, Any]]:
    """autofaiss over the staged ``.npy`` folder (inner product); raise with autofaiss's own
    reason when it raises or builds nothing."""
    from autofaiss import build_index

    collect = _Collect()
    autofaiss_log = logging.getLogger("autofaiss")
    autofaiss_log.addHandler(collect)
    try:
        index, infos = build_index(
            embeddings=staging, file_format="npy", index_path=index_path,
            index_infos_path=index_path + ".json", metric_type="ip",
            max_index_memory_usage=config.max_index_memory_usage,
            current_memory_available=config.current_memory_available,
            max_index_query_time_ms=config.max_index_query_time_ms,
            index_key=config.index_key or None, verbose=logging.WARNING,
            nb_cores=os.cpu_count(), should_be_memory_mappable=config.should_be_memory_mappable,
        )
    except Exception as exc:
        raise RuntimeError(
            f"autofaiss could not build the index over {n} vectors of dim {dim} "
            f"(index_key={config.index_key!r}): {type(exc).__name__}: {exc}") from exc
    finally:
        autofaiss_log.removeHandler(collect)
    if index is None:
        said = "; ".join(collect.messages[-3:]) or "no reason logged"
        raise RuntimeError(
            f"autofaiss built no index for {n} vectors of dim {dim} (autofaiss: {said}): raise "
            f"max_index_memory_usage={config.max_index_memory_usage!r} or "
            f"current_memory_available={config.current_memory_available!r}, or pass an "
            "index_key")
    return index, dict(infos or {})


def run_index(output_dir: str, config: IndexConfig) -> IndexResult:
    """Build ``output_dir/faiss/knn.index``, ``output_dir/id_mapping/`` and
    ``output_dir/index_infos.json``; raise with autofaiss's reason when it builds nothing."""
    import faiss

    config.validate()
    manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
    data_dir = io.join(output_dir, schema.DATA_DIR)
    io.require_shards([io.shard_number(p) for p in io.list_shards(data_dir)], manifest["shards"],
                      f"index: {data_dir}")
    start = time.monotonic()
    n_rows = count_rows(output_dir)
    _remove_stale(output_dir)
    # the metadata filters read (clip_index.index.columns): written before the index, whose
    # knn.index marks the folder complete
    columns = write_column_store(output_dir)
    if use_two_stage(n_rows, config):
        from clip_index.index.twostage import build_two_stage

        result = {**build_two_stage(output_dir, config), "columns": columns,
                  "seconds": round(time.monotonic() - start, 2),
                  "model": manifest["model"], "pretrained": manifest["pretrained"]}
        io.write_json(io.join(output_dir, schema.INDEX_INFOS), result)
        log.info("index: two stages, %s (%s) + exact re-rank of %s candidates over %d × %d, "
                 "recall@10 %s, p50 %s ms, %.1fs", result["index_key"], result["index_param"],
                 result["rerank_depth"], result["vectors"], result["dim"],
                 result.get("recall_at_10"), result.get("latency_p50_ms"),
                 result["build_seconds"])
        return IndexResult(output_dir, result)
    with tempfile.TemporaryDirectory(prefix="clip-index-") as tmp:
        staging = os.path.join(tmp, "vectors")
        os.makedirs(staging)
        n, dim = stage_vectors(output_dir, npy_folder_sink(staging),
                               os.path.join(tmp, schema.MAPPING_FILE))
        if n == 0:
            raise RuntimeError(f"no embeddings in {io.join(output_dir, schema.DATA_DIR)}: "
                               "nothing to index")
        local_index = os.path.join(tmp, schema.INDEX_FILE)
        index, infos = build_with_autofaiss(staging, local_index, config, n, dim)
        build_s = time.monotonic() - start
        vectors = VectorParts.from_folder(staging)
        verify_alignment(index, vectors)
        quality: dict[str, Any] = {}
        if config.recall_queries:
            quality = tune_and_measure(index, vectors, config.recall_queries,
                                       config.target_recall,
                                       max_query_time_ms=config.max_index_query_time_ms)
        faiss.write_index(index, local_index)  # saved after tuning: the file holds the params
        size = os.path.getsize(local_index)
        publish_query_files(output_dir, tmp, [schema.MAPPING_FILE, schema.INDEX_FILE])
    result = {
        "index_key": infos.get("index_key"),
        "index_param": quality.get("index_param", infos.get("index_param")),
        "autofaiss_index_param": infos.get("index_param"),
        "two_stage": False, "columns": columns,
        "metric": "inner_product", "vectors": n, "dim": dim, "size_bytes": size,
        "build_seconds": round(build_s, 2),
        "seconds": round(time.monotonic() - start, 2),  # the whole step: build, tune, measure
        **quality,
        "model": manifest["model"], "pretrained": manifest["pretrained"],
        # not its index_path: a temporary folder of the build machine, gone once published
        "autofaiss": {k: v for k, v in infos.items()
                      if k not in ("index_key", "index_param", "index_path")},
    }
    io.write_json(io.join(output_dir, schema.INDEX_INFOS), result)
    log.info("index: %s (%s) over %d × %d, recall@10 %.3f, p50 %s ms, %.1fs",
             result["index_key"], result["index_param"], n, dim,
             quality.get("recall_at_10", float("nan")), quality.get("latency_p50_ms"), build_s)
    return IndexResult(output_dir, result)


def use_two_stage(n: int, config: IndexConfig) -> bool:
    """Two stages from `two_stage_min_vectors` vectors on, unless an index_key is forced."""
    return (not config.index_key and config.two_stage_min_vectors > 0
            and n >= config.two_stage_min_vectors)


def count_rows(output_dir: str) -> int:
    """Rows in ``output_dir/data/``, from the parquet footers (no data read)."""
    from clip_index.index.twostage import shard_rows

    return sum(shard_rows(io.list_shards(io.join(output_dir, schema.DATA_DIR))))


def _remove_stale(output_dir: str) -> None:
    """Companion files of an earlier build must not outlive it: a re-rank file beside a new
    single-stage index (readers would take the folder for a two-stage index), an Arrow id
    mapping beside new id_mapping/ shards (readers would take its rows)."""
    from clip_index.index.rerank import RERANK_FILE

    for name in (RERANK_FILE, schema.MAPPING_FILE):
        path = io.join(output_dir, schema.FAISS_DIR, name)
        if io.exists(path):
            fs, fs_path = io.filesystem(path)
            fs.rm(fs_path)
    remove_column_store(output_dir)


def verify_alignment(index: Any, vectors: VectorParts, samples: int = 50) -> None:
    """Stored vector i must find itself (or an identical vector) at faiss id i: the staged
    order and the index order agree. Raises when fewer than half do."""
    picks = np.random.default_rng(1).choice(len(vectors), min(samples, len(vectors)), False)
    q = vectors.take(picks)
    _, ids = index.search(q, min(10, len(vectors)))
    hits = 0
    for i, v, row in zip(picks, q, ids):
        found = row[row >= 0]
        hits += int(i in found or (len(found) > 0 and np.allclose(
            vectors.take(found[:1])[0], v, atol=1e-5)))
    if hits < 0.5 * len(picks):
        raise RuntimeError(f"index ids do not line up with the id mapping: only {hits} of "
                           f"{len(picks)} stored vectors found themselves")
