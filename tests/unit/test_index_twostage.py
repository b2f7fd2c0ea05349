"""Two-stage index: chosen from two_stage_min_vectors on (small sets keep one stage), a faiss
first stage readable alone plus float16 re-rank vectors, ids aligned with the mapping, exact
re-ranked scores, both stages in index_infos.json, clear errors for broken folders, and the
bounded-memory build's pieces (the sample, the store writer)."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from clip_index import schema
from clip_index.config import ConfigError, IndexConfig
from clip_index.hub import QUERY_FILES
from clip_index.index.build import run_index
from clip_index.index.rerank import RERANK_FILE, RerankStore, RerankWriter
from clip_index.index.twostage import first_stage_key, stream_and_sample
from clip_index.publish.card import dataset_card
from clip_index.search.searcher import ClipIndex
from tests.support.outputs import clustered_vectors, write_output_dir

DIM = 32
N = 4000


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    return clustered_vectors(n, DIM, seed, clusters=40, noise=0.4)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[str]]:
    out = tmp_path_factory.mktemp("twostage")
    vectors = _clustered(N)
    rng = np.random.default_rng(5)
    uids = [f"uid-{i}" for i in rng.permutation(N)]
    cuts = [0, 1000, 1000, 2500, N]  # uneven shards, one empty, numbers that sort differently
    write_output_dir(out, vectors, uids, [list(range(a, b)) for a, b in zip(cuts, cuts[1:])],
                     shard_numbers=[3, 99999, 100000, 10])
    run_index(str(out), IndexConfig(two_stage_min_vectors=N, recall_queries=300,
                                    target_recall=0.95))
    return out, vectors, uids


def test_from_the_threshold_on_the_index_has_two_stages_described_in_infos(
        built: tuple[Path, np.ndarray, list[str]]) -> None:
    out, _, _ = built
    infos = json.loads((out / schema.INDEX_INFOS).read_text())
    assert infos["two_stage"] is True and infos["vectors"] == N and infos["dim"] == DIM
    first, rerank = infos["stages"]["first"], infos["stages"]["rerank"]
    assert first["index_key"] == infos["index_key"] and "x4fs" in first["index_key"]
    assert first["index_param"] == infos["index_param"] and infos["index_param"].startswith(
        "nprobe=")
    assert rerank["file"] == f"faiss/{RERANK_FILE}" and rerank["dtype"] == "float16"
    assert rerank["depth"] == infos["rerank_depth"] >= 10
    assert infos["recall_at_10"] >= 0.9  # measured on held-out halves of leave-one-out queries
    assert infos["recall_at_10"] >= infos["first_stage_recall_at_10"]
    # both stages are plain faiss indexes: the re-rank vectors an fp16 scalar quantizer
    first_stage = faiss.read_index(str(out / "faiss" / "knn.index"))
    assert first_stage.ntotal == N and first_stage.d == DIM
    stored = faiss.read_index(str(out / "faiss" / RERANK_FILE))
    assert isinstance(stored, faiss.IndexScalarQuantizer) and stored.ntotal == N
    assert stored.sq.qtype == faiss.ScalarQuantizer.QT_fp16 and stored.d == DIM
    assert infos["size_bytes"] == (out / "faiss" / "knn.index").stat().st_size
    # the published layout's query files include the re-rank vectors (hf:// readers get them)
    assert any(fnmatch.fnmatch(f"faiss/{RERANK_FILE}", p) for p in QUERY_FILES)
    assert f"`faiss/{RERANK_FILE}`" in dataset_card(str(out), "org/name")  # the card says so


def test_ids_stay_aligned_and_scores_are_exact_inner_products(
        built: tuple[Path, np.ndarray, list[str]]) -> None:
    out, vectors, uids = built
    for mmap in (False, True):
        index = ClipIndex(out, mmap=mmap)
        assert index.store is not None and len(index) == N
        results = index.search_embedding(vectors[:300], k=5)
        assert [r[0].uid for r in results] == uids[:300]  # each finds its own row first
        stored = _stored(out)
        found = 0
        for q, row in zip(vectors[:300], results):
            exact = stored @ q
            scores = [r.score for r in row]
            assert scores == pytest.approx(exact[[r.id for r in row]], abs=1e-5)  # exact
            assert scores == sorted(scores, reverse=True)
            found += len({r.id for r in row} & set(np.argsort(-exact)[:5].tolist()))
        assert found / (5 * 300) >= 0.9  # the re-ranked top 5 are mostly the true top 5
        assert np.allclose(index.embeddings_of(np.array([7, 3])), stored[[7, 3]])


def _stored(out: Path) -> np.ndarray:
    """The re-rank vectors as float32, read by faiss alone."""
    index = faiss.read_index(str(out / "faiss" / RERANK_FILE))
    return index.reconstruct_n(0, index.ntotal)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_faiss_reads_the_streamed_store_and_refines_like_the_python_rerank(
        tmp_path: Path, dtype: str) -> None:
    from clip_index.index.rerank import TwoStageIndex, rerank

    vectors = _clustered(3000, seed=4)
    path = str(tmp_path / "s.index")
    writer = RerankWriter(path, 3000, DIM, dtype)
    for start in range(0, 3000, 700):  # streamed in chunks, the last one partial
        writer.append(vectors[start:start + 700])
    writer.close()
    as_stored = vectors.astype(dtype).astype(np.float32)
    read = faiss.read_index(path)  # faiss alone, not mapped
    assert read.ntotal == 3000 and np.array_equal(read.reconstruct_n(0, 3000), as_stored)
    store = RerankStore(path, 3000, DIM)
    assert store.dtype == dtype and np.array_equal(store.take(np.arange(3000)), as_stored)
    first = faiss.index_factory(DIM, "IVF16,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    first.train(vectors)
    first.add(vectors)
    faiss.extract_index_ivf(first).nprobe = 2
    queries = _clustered(50, seed=9)
    scores, ids = TwoStageIndex(first, store, 60).search(queries, 10)
    _, candidates = first.search(queries, 60)
    py_scores, py_ids = rerank(store, queries, candidates, 10)
    assert np.array_equal(ids, py_ids)
    assert np.allclose(scores, py_scores, atol=1e-5)
    assert np.allclose(scores, np.take_along_axis(as_stored @ queries.T, ids.T, 0).T,
                       atol=1e-5)  # exact inner products of the stored rows


def test_deduplicate_widens_past_the_rerank_depth(
        built: tuple[Path, np.ndarray, list[str]]) -> None:
    out, vectors, _ = built
    index = ClipIndex(out)
    deep = index.infos["rerank_depth"] + 50
    (row,) = index.search_embedding(vectors[:1], k=deep)
    assert len(row) == deep and len({r.id for r in row}) == deep
    (dedup,) = index.search_embedding(vectors[:1], k=3, deduplicate=0.999)
    assert len(dedup) == 3


def test_below_the_threshold_the_index_keeps_one_stage(tmp_path: Path) -> None:
    vectors = _clustered(600)
    write_output_dir(tmp_path, vectors, [f"u{i}" for i in range(600)])
    (tmp_path / "faiss").mkdir()
    (tmp_path / "faiss" / RERANK_FILE).write_bytes(b"stale")  # from an earlier build
    run_index(str(tmp_path), IndexConfig(index_key="HNSW32", recall_queries=50,
                                         two_stage_min_vectors=600))  # index_key wins
    infos = json.loads((tmp_path / schema.INDEX_INFOS).read_text())
    assert infos["two_stage"] is False and infos["index_key"] == "HNSW32"
    assert not (tmp_path / "faiss" / RERANK_FILE).exists()
    assert ClipIndex(tmp_path).store is None


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_missing_rerank_file_is_named(built: tuple[Path, np.ndarray, list[str]],
                                        tmp_path: Path) -> None:
    out = _copy(built[0], tmp_path / "copy")
    (out / "faiss" / RERANK_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{RERANK_FILE}.*missing"):
        ClipIndex(out)


def test_a_rerank_file_of_the_wrong_length_or_dim_is_refused(
        built: tuple[Path, np.ndarray, list[str]], tmp_path: Path) -> None:
    out = _copy(built[0], tmp_path / "copy")
    path = out / "faiss" / RERANK_FILE

    def store(rows: int, dim: int) -> None:
        writer = RerankWriter(str(path), rows, dim)
        writer.append(np.zeros((rows, dim), dtype=np.float32))
        writer.close()

    store(N - 1, DIM)
    with pytest.raises(ValueError, match=f"hold {N - 1} rows but the first stage holds {N}"):
        ClipIndex(out)
    store(N, DIM + 1)
    with pytest.raises(ValueError, match=f"dim {DIM + 1} but the first stage has dim {DIM}"):
        ClipIndex(out)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match="cannot be read.*read error"):
        ClipIndex(out)
    path.write_bytes(b"stale")
    with pytest.raises(ValueError, match="cannot be read.*not recognized"):
        ClipIndex(out)
    flat = faiss.IndexFlatL2(DIM)
    flat.add(np.zeros((N, DIM), dtype=np.float32))
    faiss.write_index(flat, str(path))
    with pytest.raises(ValueError, match="metric 1: expected inner product"):
        ClipIndex(out)


def test_an_index_built_with_another_model_is_refused(
        built: tuple[Path, np.ndarray, list[str]], tmp_path: Path) -> None:
    out = _copy(built[0], tmp_path / "copy")
    manifest = json.loads((out / schema.MANIFEST).read_text())
    manifest["model"] = "ViT-L-14"
    (out / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="built from model 'tiny-clip'.*'ViT-L-14'"):
        ClipIndex(out)


def test_a_query_of_another_dim_is_refused(built: tuple[Path, np.ndarray, list[str]]) -> None:
    with pytest.raises(ValueError, match=rf"expected \(n, {DIM}\)"):
        ClipIndex(built[0]).search_embedding(np.ones(DIM + 4, dtype=np.float32))


def test_first_stage_key_follows_the_size() -> None:
    assert first_stage_key(1_000_000, 512) == "IVF2048,PQ128x4fs"
    assert first_stage_key(12_800_000, 512) == "IVF8192_HNSW32,PQ128x4fs"
    assert first_stage_key(250_000, 768) == "IVF1024,PQ192x4fs"
    assert first_stage_key(300_000, 510).endswith(",SQ8")  # fast-scan PQ cannot split 510


def test_config_refuses_bad_two_stage_settings() -> None:
    with pytest.raises(ConfigError, match="rerank_dtype='int8'"):
        IndexConfig(rerank_dtype="int8").validate()
    with pytest.raises(ConfigError, match="two_stage_min_vectors=-1"):
        IndexConfig(two_stage_min_vectors=-1).validate()
    with pytest.raises(ConfigError, match="first_stage_key='IVF,,'"):
        IndexConfig(first_stage_key="IVF,,").validate()


def test_the_build_pass_writes_the_store_and_a_uniform_sample_in_id_order(
        tmp_path: Path) -> None:
    vectors = _clustered(3000, seed=3)
    write_output_dir(tmp_path, vectors, [f"u{i}" for i in range(3000)],
                     [list(range(0, 1200)), list(range(1200, 3000))])
    store_path = str(tmp_path / "store.index")
    sample, n, dim = stream_and_sample(str(tmp_path), store_path, "float16", 500, 3000,
                                       str(tmp_path / "mapping.arrow"))
    assert (n, dim) == (3000, DIM) and sample.shape == (500, DIM)
    store = RerankStore(store_path, 3000, DIM)
    as_stored = vectors.astype(np.float16).astype(np.float32)
    assert np.array_equal(np.concatenate([c for _, c in store.iter_chunks(rows=700)]),
                          as_stored)
    # every sampled row is a stored row, none twice, drawn from both shards, in id order
    rows = [int(np.flatnonzero((as_stored == s).all(axis=1))[0]) for s in sample]
    assert len(set(rows)) == 500 and rows == sorted(rows)
    assert min(rows) < 1200 < max(rows)


def test_the_store_writer_checks_the_row_count(tmp_path: Path) -> None:
    writer = RerankWriter(str(tmp_path / "s.index"), 10, 4)
    writer.append(np.ones((6, 4), dtype=np.float32))
    with pytest.raises(RuntimeError, match="more than the 10 rows"):
        writer.append(np.ones((5, 4), dtype=np.float32))
    with pytest.raises(RuntimeError, match="6 rows written, 10 announced"):
        writer.close()
    with pytest.raises(ValueError, match=r"expected \(m, 4\)"):
        RerankWriter(str(tmp_path / "t.index"), 10, 4).append(np.ones((2, 5)))


def test_cli_query_and_retrieve_read_a_two_stage_folder(
        built: tuple[Path, np.ndarray, list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from clip_index.cli import main

    out, vectors, uids = built
    (tmp_path / "e.json").write_text(json.dumps(vectors[[4, 9]].tolist()))
    assert main(["query", str(out), "--embedding", str(tmp_path / "e.json"), "-k", "3",
                 "--json", "--mmap"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r[0]["uid"] for r in rows] == [uids[4], uids[9]] and len(rows[0]) == 3
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"embedding": v.tolist()}) + "\n"
                                              for v in vectors[:3]))
    assert main(["retrieve", str(tmp_path / "q.jsonl"), str(out), "--output-dir",
                 str(tmp_path / "r"), "--num-images", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 3 and summary["matches"] == 12


def test_a_published_two_stage_index_opens_from_the_hub(
        built: tuple[Path, np.ndarray, list[str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    from clip_index.config import PublishConfig
    from clip_index.publish.step import run_publish
    from tests.support.hub_server import HubStandIn

    out = _copy(built[0], tmp_path / "copy")
    # the stand-in speaks the LFS "basic" transfer, not Xet; the suite runs offline otherwise
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = HubStandIn().start()
    try:
        run_publish(str(out), PublishConfig(hub_repo_id="org/two"), token=hub.token,
                    endpoint=hub.endpoint)
        index = ClipIndex.from_hub("org/two", endpoint=hub.endpoint, token=hub.token,
                                   cache_dir=str(tmp_path / "cache"))
    finally:
        hub.stop()
    assert index.store is not None and not (Path(index.output_dir) / "data").exists()
    _, vectors, uids = built
    assert [r[0].uid for r in index.search_embedding(vectors[:20], k=2)] == uids[:20]


def test_the_query_files_include_a_memory_mapped_id_mapping_with_the_parquet_rows(
        built: tuple[Path, np.ndarray, list[str]], tmp_path: Path) -> None:
    from clip_index.index.layout import detect_layout, read_mapping

    out, vectors, uids = built
    mapping_file = out / "faiss" / schema.MAPPING_FILE
    assert mapping_file.exists()
    assert any(fnmatch.fnmatch(f"faiss/{schema.MAPPING_FILE}", p) for p in QUERY_FILES)
    index = ClipIndex(out)
    assert index.layout.mapping_file.endswith(schema.MAPPING_FILE)
    with_file = [[(r.id, r.uid, r.url, r.caption) for r in row]
                 for row in index.search_embedding(vectors[::97], k=7)]
    assert {r[0][1] for r in with_file} == set(uids[::97])  # each row finds itself
    # without the file (a folder written before it existed) the parquet gives the same rows
    copy = _copy(out, tmp_path / "copy")
    (copy / "faiss" / schema.MAPPING_FILE).unlink()
    assert detect_layout(str(copy)).mapping_file == ""
    parquet_rows = read_mapping(detect_layout(str(copy)))
    assert parquet_rows.to_pylist() == index.mapping.table.to_pylist()
    assert sorted(parquet_rows.column(schema.UID).to_pylist()) == sorted(uids)
    assert index.metadata(2999) == {k: v for k, v in parquet_rows.slice(2999, 1).to_pylist()[0]
                                    .items() if k != schema.FAISS_ID}
    parquet = [[(r.id, r.uid, r.url, r.caption) for r in row]
               for row in ClipIndex(copy).search_embedding(vectors[::97], k=7)]
    assert parquet == with_file


def test_id_mapping_rows_are_read_across_chunks_and_out_of_range_ids_refused() -> None:
    import pyarrow as pa

    from clip_index.index.layout import IdMapping

    batches = [pa.table({schema.FAISS_ID: pa.array(range(a, b), pa.int64()),
                         schema.UID: [f"u{i}" for i in range(a, b)],
                         schema.URL: [f"http://h/{i}" for i in range(a, b)],
                         schema.CAPTION: [None if i % 3 else f"c{i}" for i in range(a, b)]},
                        schema=schema.ID_MAPPING_SCHEMA) for a, b in ((0, 5), (5, 5), (5, 12))]
    mapping = IdMapping(pa.concat_tables(batches))
    ids = np.array([11, 0, 6, 4, 11, 5])  # any order, repeats, both sides of a chunk edge
    assert [r["uid"] for r in mapping.rows(ids)] == [f"u{i}" for i in ids]
    assert mapping.rows(np.array([3]))[0] == {"uid": "u3", "url": "http://h/3", "caption": "c3"}
    assert mapping.rows(np.array([], dtype=np.int64)) == []
    with pytest.raises(IndexError, match=r"expected ids in 0\.\.11"):
        mapping.rows(np.array([12]))


def test_a_broken_or_stale_mapping_file_is_refused_and_a_rebuild_replaces_it(
        built: tuple[Path, np.ndarray, list[str]], tmp_path: Path) -> None:
    import pyarrow as pa

    out = _copy(built[0], tmp_path / "copy")
    path = out / "faiss" / schema.MAPPING_FILE
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot be read.*Arrow file the index step writes"):
        ClipIndex(out)
    shifted = pa.table({schema.FAISS_ID: pa.array(range(1, N + 1), pa.int64()),
                        schema.UID: ["u"] * N, schema.URL: ["x"] * N, schema.CAPTION: ["c"] * N},
                       schema=schema.ID_MAPPING_SCHEMA)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, shifted.schema) as writer:
        writer.write_table(shifted)
    with pytest.raises(RuntimeError, match=f"not faiss ids 0..{N - 1} in order"):
        ClipIndex(out)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(
            sink, pa.schema([pa.field("i", pa.int64())])) as writer:
        writer.write_table(pa.table({"i": pa.array(range(N), pa.int64())}))
    with pytest.raises(ValueError, match=r"has columns \['i'\]"):
        ClipIndex(out)
    # a single-stage rebuild of the folder writes the file again from the new id_mapping/
    run_index(str(out), IndexConfig(index_key="Flat", recall_queries=0))
    index = ClipIndex(out)
    assert index.store is None and index.layout.mapping_file
    assert index.mapping.table.to_pylist() == ClipIndex(built[0]).mapping.table.to_pylist()


def test_rerank_scores_are_exact_in_blocks_and_float16_widens_exactly(tmp_path: Path) -> None:
    from clip_index.index.rerank import SCORE_BLOCK, widen_float16

    rng = np.random.default_rng(2)
    rows = 3 * SCORE_BLOCK + 5  # a partial last block
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32) * np.logspace(
        -9, 0, rows, dtype=np.float32)[:, None]  # down into float16's subnormals and zero
    writer = RerankWriter(str(tmp_path / "s.index"), rows, DIM)
    writer.append(vectors)
    writer.close()
    store = RerankStore(str(tmp_path / "s.index"), rows, DIM)
    stored = vectors.astype(np.float16)
    assert np.array_equal(widen_float16(stored).view(np.uint32),
                          stored.astype(np.float32).view(np.uint32))  # bit for bit
    q = rng.standard_normal(DIM).astype(np.float32)
    ids = np.sort(rng.choice(rows, rows - 7, replace=False))
    expected = stored.astype(np.float64)[ids] @ q.astype(np.float64)
    assert np.allclose(store.scores(ids, q), expected, rtol=1e-5, atol=1e-6)
    shuffled = rng.permutation(ids)
    assert np.array_equal(store.take(shuffled), stored[shuffled].astype(np.float32))


def test_id_mapping_reads_values_from_any_string_chunk() -> None:
    """Values come from the Arrow buffers: sliced chunks (a non-zero offset into offsets and
    validity bits), nulls on both sides of a byte edge, non-ASCII text, large_string columns,
    and a column of another type (the reference's all-null uid) through pyarrow: each row as
    pyarrow's own to_pylist gives it."""
    import pyarrow as pa

    from clip_index.index.layout import IdMapping

    n = 40
    captions = [None if i % 7 in (0, 3) else f"légende {i} — ✓" * (i % 4) for i in range(n)]
    full = pa.table({schema.FAISS_ID: pa.array(range(n), pa.int64()),
                     schema.UID: [f"u{i}" for i in range(n)],
                     schema.URL: [None if i == 9 else f"http://h/{i}" for i in range(n)],
                     schema.CAPTION: captions}, schema=schema.ID_MAPPING_SCHEMA)
    # chunks that are slices of one array: offsets 0, 3, 11, 29 into the same buffers
    sliced = pa.concat_tables([full.slice(0, 3), full.slice(3, 8), full.slice(11, 18),
                               full.slice(29, 11)])
    large = sliced.cast(pa.schema([f.with_type(pa.large_string()) if f.type == pa.string()
                                   else f for f in sliced.schema]))
    other = sliced.set_column(1, schema.UID, pa.nulls(n, pa.null()))
    ids = np.array([0, 2, 3, 9, 10, 11, 21, 28, 29, 39, 14, 7])
    for table in (sliced, large, other):
        expected = [{k: v for k, v in full.slice(int(i), 1).to_pylist()[0].items()
                     if k != schema.FAISS_ID} for i in ids]
        if table is other:
            expected = [{**row, schema.UID: None} for row in expected]
        assert IdMapping(table).rows(ids) == expected
