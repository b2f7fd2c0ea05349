"""Write + index + search on random embeddings: ids line up with the mapping whatever the order."""

import json

import numpy as np
import pyarrow as pa
import pytest

from clip_index import io, schema
from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from clip_index.index.write import run_write
from clip_index.search.searcher import ClipIndex
from clip_index.units import UnitRecord

DIM = 16
MODEL = {"model": "tiny-clip", "pretrained": "none", "dim": DIM, "seed": 0, "dtype": "float32",
         "normalised": True}


def _embedding_shards(root, rng: np.random.Generator, shards: int = 3, rows: int = 40) -> dict:
    """Shards written in shuffled order with shuffled uids; returns uid → vector."""
    vectors = {}
    for shard in rng.permutation(shards):
        uids = [f"uid-{shard}-{i}" for i in rng.permutation(rows)]
        emb = rng.normal(size=(rows, DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        status = ["success"] * (rows - 2) + ["failed_to_download", "failed_to_decode"]
        table = pa.table({
            "uid": uids, "url": [f"http://x/{u}" for u in uids], "caption": uids,
            "status": status, "error": [None] * (rows - 2) + ["http_404: x", "decode_error: y"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
        })
        folder = root / f"task{shard}"
        io.write_parquet_atomic(str(folder / io.shard_name(int(shard))),
                                table.cast(schema.embeddings_schema(DIM)))
        stats = {"shard": int(shard), "rows": rows, "statuses": {"success": rows - 2,
                 "failed_to_download": 1, "failed_to_decode": 1}, "model": MODEL}
        (folder / io.stats_name(int(shard))).write_text(json.dumps(stats))
        UnitRecord([int(shard)], list(range(shards))).write(str(folder))  # one task per shard
        vectors.update({u: v for u, v, s in zip(uids, emb, status) if s == "success"})
    return vectors


@pytest.fixture
def built(tmp_path):
    vectors = _embedding_shards(tmp_path / "emb", np.random.default_rng(0))
    out = tmp_path / "out"
    result = run_write(sorted(str(p) for p in (tmp_path / "emb").iterdir()), str(out))
    info = run_index(str(out), IndexConfig(index_key="Flat", recall_queries=50))
    return out, vectors, result, info


def test_write_keeps_failures_and_counts(built) -> None:
    out, vectors, result, _ = built
    assert result.manifest["totals"]["rows"] == 120
    assert result.manifest["totals"]["statuses"]["failed_to_download"] == 3
    failed = pa.concat_tables(io.read_parquet(p) for p in io.list_shards(str(out / "failed")))
    assert failed.num_rows == 6 and set(failed.column("status").to_pylist()) == {
        "failed_to_download", "failed_to_decode"}
    data = pa.concat_tables(io.read_parquet(p) for p in io.list_shards(str(out / "data")))
    assert data.num_rows == len(vectors) == 114


def test_every_vector_finds_its_own_uid(built) -> None:
    out, vectors, _, info = built
    assert info.infos["vectors"] == 114 and info.infos["recall_at_10"] == 1.0
    index = ClipIndex(out)
    uids = list(vectors)
    results = index.search_embedding(np.stack([vectors[u] for u in uids]), k=1)
    assert [r[0].uid for r in results] == uids
    assert all(r[0].score == pytest.approx(1.0, abs=1e-5) for r in results)
    assert results[0][0].url == f"http://x/{uids[0]}"


def test_autofaiss_choice_and_bad_queries(built) -> None:
    out, vectors, _, _ = built
    info = run_index(str(out), IndexConfig(recall_queries=20))
    assert info.infos["index_key"] and info.infos["vectors"] == len(vectors)
    index = ClipIndex(out)
    with pytest.raises(ValueError, match=r"expected \(n, 16\)"):
        index.search_embedding(np.zeros(8), 3)
    assert len(index.search_embedding(np.ones(DIM), k=500)[0]) == len(vectors)


def test_mixed_models_are_refused(tmp_path) -> None:
    _embedding_shards(tmp_path / "emb", np.random.default_rng(1), shards=2)
    stats_file = tmp_path / "emb" / "task1" / io.stats_name(1)
    stats = json.loads(stats_file.read_text())
    stats["model"] = {**MODEL, "pretrained": "other"}
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(RuntimeError, match="different models"):
        run_write([str(p) for p in (tmp_path / "emb").iterdir()], str(tmp_path / "out"))


def test_not_an_output_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="expected a clip-index output folder"):
        ClipIndex(tmp_path)
