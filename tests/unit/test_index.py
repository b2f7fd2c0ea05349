"""Index step: id mapping aligned with faiss ids on shuffled multi-shard input, tuning and
metrics in index_infos.json, autofaiss failures surfaced, memory-mapped loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clip_index import schema
from clip_index.config import ConfigError, IndexConfig
from clip_index.index.build import run_index
from clip_index.index.tune import VectorParts, exact_top_k, search_ids, tune_and_measure
from clip_index.search.searcher import ClipIndex
from tests.support.outputs import random_unit, write_output_dir

DIM = 32


def _shuffled_multi_shard(tmp_path: Path, n: int = 700) -> tuple[Path, np.ndarray, list[str]]:
    rng = np.random.default_rng(7)
    vectors = random_unit(n, DIM, seed=3)
    uids = [f"uid-{i:04d}" for i in rng.permutation(n)]  # ids unrelated to row order
    order = rng.permutation(n)
    cuts = [0, 90, 90, 330, 520, n]  # uneven, one empty shard
    shards = [sorted(order[a:b].tolist(), key=lambda _: rng.random()) for a, b in
              zip(cuts, cuts[1:])]
    # shard numbers whose names sort differently as text and as numbers
    write_output_dir(tmp_path, vectors, uids, shards, shard_numbers=[2, 10, 99999, 100000, 7])
    return tmp_path, vectors, uids


def test_id_mapping_is_aligned_with_faiss_ids_on_shuffled_multi_shard_input(
        tmp_path: Path) -> None:
    out, vectors, uids = _shuffled_multi_shard(tmp_path)
    run_index(str(out), IndexConfig(index_key="HNSW32", recall_queries=100))
    index = ClipIndex(out)
    assert len(index) == len(vectors)
    results = index.search_embedding(vectors, k=1)
    found = [r[0].uid for r in results]
    assert found == uids  # every stored vector finds its own row's uid, none shifted
    assert all(r[0].score == pytest.approx(1.0, abs=1e-4) for r in results)
    # and the mapping files are in faiss id order 0..n-1
    ids = np.concatenate([pq.read_table(p).column(schema.FAISS_ID).to_numpy() for p in
                          sorted((out / schema.ID_MAPPING_DIR).glob("part-*.parquet"),
                                 key=lambda p: int(p.stem.split("-")[1]))])
    assert ids.tolist() == list(range(len(vectors)))


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_index_infos_and_metrics_report_tuned_recall_and_latency(tmp_path: Path) -> None:
    vectors = _clustered(1500)
    write_output_dir(tmp_path, vectors, [f"u{i}" for i in range(len(vectors))], [
        list(range(0, 800)), list(range(800, 1500))])
    result = run_index(str(tmp_path), IndexConfig(index_key="IVF16,Flat", recall_queries=300,
                                                  target_recall=0.9))
    infos = json.loads((tmp_path / schema.INDEX_INFOS).read_text())
    assert infos == json.loads(json.dumps(result.infos))
    assert infos["index_key"] == "IVF16,Flat" and infos["vectors"] == 1500
    assert infos["dim"] == DIM and infos["metric"] == "inner_product"
    assert infos["size_bytes"] == (tmp_path / "faiss" / "knn.index").stat().st_size > 0
    assert infos["index_param"].startswith("nprobe=")
    assert infos["recall_queries_kind"] == "leave-one-out"
    assert "index_path" not in infos["autofaiss"]  # a temporary folder, gone once published
    assert infos["recall_at_10"] >= 0.85 and 0 <= infos["recall_at_1"] <= 1
    assert 0 < infos["latency_p50_ms"] <= infos["latency_p99_ms"]
    metrics = result.as_metrics()
    for name in ("vectors", "dim", "size_bytes", "recall_at_1", "recall_at_10",
                 "latency_p50_ms", "latency_p99_ms"):
        assert isinstance(metrics[name], float)
    # the chosen nprobe is saved with the index and used by queries
    nprobe = int(infos["index_param"].split("=")[1].split(",")[0])
    import faiss

    assert faiss.extract_index_ivf(ClipIndex(tmp_path).index).nprobe == nprobe


def test_leave_one_out_queries_never_count_themselves() -> None:
    import faiss

    x = random_unit(300, DIM, seed=1)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    parts = VectorParts([x[:100], x[100:]])
    picks = np.arange(0, 300, 7)
    exact = exact_top_k(parts, x[picks], 5, exclude=picks)
    assert not (exact == picks[:, None]).any()
    assert (search_ids(flat, x[picks], 5, picks) == exact).all()
    m = tune_and_measure(flat, parts, 60, 0.95)
    assert m["recall_at_10"] == 1.0 and m["index_param"] == ""


def test_autofaiss_giving_up_fails_the_step_with_its_reason(tmp_path: Path) -> None:
    vectors = random_unit(200, DIM)
    write_output_dir(tmp_path, vectors, [f"u{i}" for i in range(200)])
    with pytest.raises(RuntimeError, match="autofaiss built no index .*not have enough memory"):
        run_index(str(tmp_path), IndexConfig(current_memory_available="1K"))
    assert not (tmp_path / "faiss" / "knn.index").exists()


def test_bad_index_key_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"index_key='IVF,Flat': expected a faiss"):
        IndexConfig(index_key="IVF,Flat").validate()
    with pytest.raises(ConfigError, match="target_recall"):
        IndexConfig(target_recall=1.5).validate()


def test_memory_mapped_index_gives_the_same_results(tmp_path: Path) -> None:
    vectors = random_unit(400, DIM, seed=5)
    write_output_dir(tmp_path, vectors, [f"u{i}" for i in range(400)])
    run_index(str(tmp_path), IndexConfig(index_key="Flat", recall_queries=20))
    in_ram = ClipIndex(tmp_path).search_embedding(vectors[:20], 5)
    mapped = ClipIndex(tmp_path, mmap=True).search_embedding(vectors[:20], 5)
    assert [[r.uid for r in row] for row in in_ram] == [[r.uid for r in row] for row in mapped]


def test_tuning_stops_at_the_query_time_budget() -> None:
    import faiss

    from clip_index.index.tune import tune

    x = random_unit(3000, DIM, seed=9)  # random: no efSearch reaches recall 1.0 for sure
    index = faiss.index_factory(DIM, "HNSW8", faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    parts = VectorParts([x])
    picks = np.arange(0, 3000, 30)
    exact = exact_top_k(parts, x[picks], 10, picks)
    unbounded, best_recall = tune(index, x[picks], exact, 1.01, 10, picks)  # unreachable target
    bounded, bounded_recall = tune(index, x[picks], exact, 1.01, 10, picks,
                                   max_query_time_ms=1e-6)
    assert int(unbounded.split("=")[1]) > 16 and best_recall > bounded_recall
    assert bounded == "efSearch=16"  # the next candidate is already over a (tiny) budget
    assert faiss.downcast_index(index).hnsw.efSearch == 16
