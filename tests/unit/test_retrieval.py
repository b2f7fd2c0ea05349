"""Retrieval API: search by text, image (path, bytes, URL through the guard), embedding and in
batches, de-duplication; the retrieve step's matches and URL shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clip_index import schema
from clip_index.config import DownloadConfig, RetrieveConfig
from clip_index.schema import RowError, Status
from clip_index.search.retrieve import run_load_queries, run_retrieve
from clip_index.search.searcher import ClipIndex
from tests.support.http_server import TestServer
from tests.support.images import image_bytes
from tests.support.outputs import TINY_DIM, build_tiny_index


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    out = tmp_path_factory.mktemp("tiny")
    return out, build_tiny_index(out)


def test_results_carry_uid_url_caption_score_for_every_query_kind(
        tiny: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, vectors = tiny
    index = ClipIndex(out)
    by_vec = index.search_embedding(vectors[5], k=3)[0]
    assert by_vec[0].uid == "img-005" and by_vec[0].score == pytest.approx(1.0, abs=1e-4)
    assert by_vec[0].url.endswith("img-005.jpg") and by_vec[0].caption == "picture number 5"
    assert [r.score for r in by_vec] == sorted((r.score for r in by_vec), reverse=True)
    text = index.search_text("a red circle", k=4)
    batch = index.search_text(["a red circle", "a blue square"], k=4)
    assert len(text) == 4 and [r.uid for r in batch[0]] == [r.uid for r in text]
    image = image_bytes(80, 60)
    path = tmp_path / "q.jpg"
    path.write_bytes(image)
    from_bytes = index.search_image(image, k=4)
    assert [r.uid for r in index.search_image(path, k=4)] == [r.uid for r in from_bytes]
    assert len(index.search_image([image, path], k=4)) == 2
    with pytest.raises(ValueError, match="could not be decoded"):
        index.search_image(b"not an image", k=2)
    fresh = ClipIndex(out)  # a bad image is refused before the query model is loaded for it
    with pytest.raises(ValueError, match="could not be decoded"):
        fresh.search_image([image, b"not an image"], k=2)
    assert fresh._model is None
    with pytest.raises(ValueError, match=rf"expected \(n, {TINY_DIM}\)"):
        index.search_embedding(np.zeros(3), k=2)


def test_search_by_url_goes_through_the_download_guard(tiny: tuple[Path, np.ndarray],
                                                       http_server: TestServer) -> None:
    out, _ = tiny
    index = ClipIndex(out)
    url = http_server.add_bytes("/q.jpg", image_bytes(80, 60))
    with pytest.raises(RowError, match="blocked_address") as blocked:
        index.search_image_url(url, k=3)  # 127.0.0.1 is not public: refused by default
    assert blocked.value.status is Status.BLOCKED
    allowed = DownloadConfig(allow_private_networks=True)
    assert [r.uid for r in index.search_image_url(url, 3, fetch=allowed)] == [
        r.uid for r in index.search_image(image_bytes(80, 60), 3)]
    big = http_server.add_bytes("/big.jpg", image_bytes(400, 400))
    with pytest.raises(RowError, match="too_large"):
        index.search_image_url(big, 3, fetch=DownloadConfig(allow_private_networks=True,
                                                            max_image_bytes=500))
    with pytest.raises(RowError, match="blocked_scheme"):
        index.search_image_url("file:///etc/passwd", 3, fetch=allowed)


def test_deduplicate_drops_near_identical_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, TINY_DIM)).astype(np.float32)
    jitter = base + 0.01 * rng.standard_normal(base.shape).astype(np.float32)
    vectors = np.concatenate([base, jitter])  # row i and row i+30 are near-copies
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    build_tiny_index(tmp_path, vectors=vectors, index_key="HNSW16")
    index = ClipIndex(tmp_path)
    plain = index.search_embedding(vectors[:5], k=6)
    deduped = index.search_embedding(vectors[:5], k=6, deduplicate=True)
    for row_plain, row_dedup in zip(plain, deduped):
        groups = [int(r.uid.split("-")[1]) % 30 for r in row_dedup]
        assert len(row_dedup) == 6 and len(set(groups)) == 6  # no pair twice, still k results
        assert len({int(r.uid.split("-")[1]) % 30 for r in row_plain}) < 6


def test_retrieve_step_writes_matches_and_url_shards(tiny: tuple[Path, np.ndarray],
                                                     tmp_path: Path) -> None:
    out, vectors = tiny
    np.save(tmp_path / "q.npy", vectors[[3, 7, 3]])
    config = RetrieveConfig(num_images=4, shard_size=5)
    assert run_load_queries(str(tmp_path / "q.npy"), str(tmp_path / "qe"), config) == 3
    result = run_retrieve(str(tmp_path / "qe"), str(out), str(tmp_path / "m"),
                          str(tmp_path / "u"), config)
    matches = pq.read_table(tmp_path / "m" / "matches.parquet")
    assert matches.schema.equals(schema.MATCHES_SCHEMA)
    rows = matches.to_pylist()
    assert result.matches == len(rows) == 12
    assert [r["rank"] for r in rows[:4]] == [1, 2, 3, 4]
    assert rows[0]["uid"] == "img-003" and rows[4]["uid"] == "img-007"
    urls = [pq.read_table(p) for p in sorted((tmp_path / "u").glob("part-*.parquet"))]
    uids = [u for t in urls for u in t.column("uid").to_pylist()]
    assert len(uids) == len(set(uids)) == result.unique_images == 8  # query 3 twice
    assert all(t.num_rows <= 5 for t in urls) and len(urls) == 2
    (tmp_path / "p.txt").write_text("a red circle\n\n a blue square \n")
    assert run_load_queries(str(tmp_path / "p.txt"), str(tmp_path / "qt"), config) == 2
    text = run_retrieve(str(tmp_path / "qt"), str(out), str(tmp_path / "m2"),
                        str(tmp_path / "u2"), config)
    assert text.matches == 8
    got = pq.read_table(tmp_path / "m2" / "matches.parquet").column("query").to_pylist()
    assert got == ["a red circle"] * 4 + ["a blue square"] * 4


def test_bad_queries_fail_with_a_clear_message(tmp_path: Path) -> None:
    config = RetrieveConfig()
    (tmp_path / "q.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match="query_column='text' is not in .*columns are"):
        run_load_queries(str(tmp_path / "q.csv"), str(tmp_path / "o"), config)
    with pytest.raises(FileNotFoundError, match="not found"):
        run_load_queries(str(tmp_path / "none.txt"), str(tmp_path / "o"), config)
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no queries"):
        run_load_queries(str(tmp_path / "e.txt"), str(tmp_path / "o"), config)


def test_deduplicate_widens_the_search_past_a_crowd_of_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    one = rng.standard_normal(TINY_DIM).astype(np.float32)
    copies = one + 0.005 * rng.standard_normal((50, TINY_DIM)).astype(np.float32)
    others = rng.standard_normal((40, TINY_DIM)).astype(np.float32) + 0.8 * one
    vectors = np.concatenate([copies, others])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    build_tiny_index(tmp_path, vectors=vectors)
    results = ClipIndex(tmp_path).search_embedding(one, k=5, deduplicate=True)[0]
    ids = [r.id for r in results]
    assert len(ids) == 5 and ids[0] < 50 and all(i >= 50 for i in ids[1:])
