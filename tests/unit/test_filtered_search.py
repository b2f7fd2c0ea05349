"""Filtered search: the column store the index step writes from data/'s metadata columns, and
ClipIndex's filters applied inside the first stage (IDSelector) and checked at the re-rank:
every result passes, k results whenever k rows pass, close to exact filtered search; clear
errors for unknown filters, bad values and columns an index lacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from clip_index import schema
from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from clip_index.search.filters import Filters, read_uids
from clip_index.search.searcher import ClipIndex
from tests.support.outputs import clustered_vectors, write_output_dir

DIM = 32
N = 4000


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    return clustered_vectors(n, DIM, seed, clusters=40, noise=0.4)


def _metadata(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "width": rng.integers(32, 2000, n), "height": rng.integers(32, 2000, n),
        "b32": rng.uniform(0.1, 0.4, n), "l14": rng.uniform(0.1, 0.4, n),
        "faces": rng.integers(0, 4, n), "faces_known": rng.random(n) > 0.1,
        "changed": rng.random(n) < 0.2, "changed_known": rng.random(n) > 0.3,
    }


def _extra(m: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """data/ columns as the write step carries them (download + load passthrough)."""
    return {
        schema.ORIGINAL_WIDTH: pa.array(m["width"], pa.int32()),
        schema.ORIGINAL_HEIGHT: pa.array(m["height"], pa.int32()),
        "clip_b32_similarity_score": pa.array(m["b32"], pa.float32()),
        "clip_l14_similarity_score": pa.array(m["l14"], pa.float32()),
        schema.FACE_COUNT: pa.array(m["faces"], pa.int32(), mask=~m["faces_known"]),
        schema.IMAGE_CHANGED: pa.array(m["changed"], pa.bool_(), mask=~m["changed_known"]),
    }


Built = tuple[Path, np.ndarray, list[str], dict[str, np.ndarray]]


def _build(out: Path, index: IndexConfig) -> Built:
    vectors = _clustered(N)
    uids = [f"{i:032x}" for i in np.random.default_rng(5).permutation(N)]
    meta = _metadata(N)
    cuts = [0, 1500, 1500, N]  # an empty shard in between
    write_output_dir(out, vectors, uids, [list(range(a, b)) for a, b in zip(cuts, cuts[1:])],
                     extra=_extra(meta))
    run_index(str(out), index)
    return out, vectors, uids, meta


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("filtered2"),
                  IndexConfig(two_stage_min_vectors=N, recall_queries=200, target_recall=0.95))


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("filtered1"),
                  IndexConfig(index_key="Flat", recall_queries=0))


def _queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries from the data's distribution: stored vectors moved a little."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), n, replace=False)] + 0.3 * rng.standard_normal(
        (n, vectors.shape[1])) / np.sqrt(vectors.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _expected_mask(f: dict[str, Any], m: dict[str, np.ndarray]) -> np.ndarray:
    mask = np.ones(N, dtype=bool)
    if "min_width" in f:
        mask &= m["width"] >= f["min_width"]
    if "min_height" in f:
        mask &= m["height"] >= f["min_height"]
    if "max_aspect_ratio" in f:
        w, h = m["width"], m["height"]
        mask &= np.maximum(w, h) / np.minimum(w, h) <= f["max_aspect_ratio"]
    if "min_clip_b32_score" in f:
        mask &= m["b32"].astype(np.float16) >= np.float16(f["min_clip_b32_score"])
    if "min_clip_l14_score" in f:
        mask &= m["l14"].astype(np.float16) >= np.float16(f["min_clip_l14_score"])
    if "max_faces" in f:
        mask &= m["faces_known"] & (m["faces"] <= f["max_faces"])
    if f.get("exclude_changed"):
        mask &= ~(m["changed_known"] & m["changed"])
    return mask


FILTERS = [
    {"min_width": 1000},  # ~50%
    {"min_width": 800, "min_height": 800, "max_aspect_ratio": 1.5},
    {"min_clip_l14_score": 0.37},  # ~10%
    {"min_clip_b32_score": 0.3, "max_faces": 0},
    {"max_faces": 0, "exclude_changed": True, "min_height": 1900},  # ~1%
    {"exclude_changed": True},
]


def _exact(vectors: np.ndarray, q: np.ndarray, mask: np.ndarray, k: int) -> list[set[int]]:
    scores = q @ vectors.T
    scores[:, ~mask] = -np.inf
    return [set(np.argsort(-row)[:min(k, int(mask.sum()))].tolist()) for row in scores]


@pytest.mark.parametrize("exact_below", [0, 20_000], ids=["idselector", "exact-small"])
@pytest.mark.parametrize("f", FILTERS, ids=lambda f: ",".join(f))
def test_two_stage_filtered_results_pass_and_match_exact(
        two_stage: Built, f: dict[str, Any], exact_below: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clip_index.index.rerank.EXACT_SELECTION", exact_below)
    out, vectors, uids, meta = two_stage
    ix = ClipIndex(out)
    mask = _expected_mask(f, meta)
    assert ix.selection(f).count == mask.sum()  # type: ignore[union-attr]
    q = _queries(vectors, 20, seed=9)
    results = ix.search_embedding(q, k=10, filters=f)
    truth = _exact(vectors, q, mask, 10)
    hits = 0
    for row, expected in zip(results, truth):
        assert len(row) == min(10, mask.sum())  # k results whenever k rows pass
        assert all(mask[r.id] for r in row), "a filtered-out row came back"
        assert all(r.uid == uids[r.id] for r in row)
        hits += len({r.id for r in row} & expected)
    assert hits / sum(len(t) for t in truth) >= 0.9


def test_selective_filter_through_the_first_stage_still_returns_k(
        two_stage: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A post-filter of the top-k would leave ~0 of 10 at 1%: the selector inside the scan
    (and more lists when the probed ones hold too few) gives all 10."""
    monkeypatch.setattr("clip_index.index.rerank.EXACT_SELECTION", 0)
    out, vectors, _, meta = two_stage
    ix = ClipIndex(out)
    f = {"min_width": 1985}
    mask = _expected_mask(f, meta)
    assert 10 <= mask.sum() <= 0.01 * N
    q = _queries(vectors, 10, seed=3)
    for row in ix.search_embedding(q, k=10, filters=f):
        assert len(row) == 10 and all(mask[r.id] for r in row)
    unfiltered = ix.search_embedding(q, k=10)
    assert sum(mask[r.id] for row in unfiltered for r in row) < 10  # what a post-filter keeps


@pytest.mark.parametrize("f", FILTERS[:4], ids=lambda f: ",".join(f))
def test_single_stage_index_filters_too(flat: Built, f: dict[str, Any]) -> None:
    out, vectors, _, meta = flat
    ix = ClipIndex(out)
    q = _queries(vectors, 5, seed=4)
    mask = _expected_mask(f, meta)
    truth = _exact(vectors, q, mask, 10)
    for row, expected in zip(ix.search_embedding(q, k=10, filters=f), truth):
        assert {r.id for r in row} == expected  # Flat: exact


def test_uid_subset_files(two_stage: Built, tmp_path: Path) -> None:
    out, vectors, uids, _ = two_stage
    ix = ClipIndex(out)
    chosen = [5, 17, 123, 999, 2500, 3999]
    # DataComp's subset format: the 32-hex-digit uid as a pair of uint64
    pairs = np.array([(int(uids[i][:16], 16), int(uids[i][16:], 16)) for i in chosen],
                     np.dtype("u8,u8"))
    np.save(tmp_path / "subset.npy", pairs)
    (tmp_path / "subset.txt").write_text("\n".join(uids[i] for i in chosen) + "\n")
    assert read_uids(str(tmp_path / "subset.npy")).to_pylist() == [uids[i] for i in chosen]
    for name in ("subset.npy", "subset.txt"):
        row = ix.search_embedding(vectors[0], k=10, filters={"uids": str(tmp_path / name)})[0]
        assert sorted(r.id for r in row) == chosen  # fewer than k pass: all of them
    both = ix.search_embedding(vectors[0], k=10, filters={"uids": str(tmp_path / "subset.txt"),
                                                          "min_width": 1})[0]
    assert len(both) == len(chosen)


def test_selection_is_cached_per_filter(two_stage: Built) -> None:
    ix = ClipIndex(two_stage[0])
    a = ix.selection({"min_width": 500})
    assert ix.selection("min_width=500") is a
    assert ix.selection(Filters(min_width=500)) is a
    assert ix.selection({"min_width": 501}) is not a
    assert ix.selection(None) is None and ix.selection({}) is None


def test_column_store_files_and_infos(two_stage: Built) -> None:
    out = two_stage[0]
    info = json.loads((out / "faiss" / "columns.json").read_text())
    assert info["rows"] == N
    assert set(info["columns"]) == {"width", "height", "clip_b32_similarity_score",
                                    "clip_l14_similarity_score", "face_count", "image_changed"}
    assert info["columns"]["face_count"]["unknown_rows"] == int((~two_stage[3]["faces_known"])
                                                                .sum())
    width = np.load(out / "faiss" / "column-width.npy")
    assert width.dtype == np.uint16 and (width == two_stage[3]["width"]).all()
    infos = json.loads((out / schema.INDEX_INFOS).read_text())
    assert infos["columns"]["columns"]["width"]["from"] == ["original_width"]


@pytest.mark.parametrize("bad, message", [
    ({"min_widht": 3}, r"unknown filter\(s\) \['min_widht'\]: expected some of"),
    ({"min_width": -1}, r"filter min_width=-1: expected an integer >= 0"),
    ({"max_aspect_ratio": 0.5}, r"max_aspect_ratio=0.5: expected a number >= 1"),
    ({"exclude_changed": "maybe"}, r"exclude_changed='maybe': expected true or false"),
    ("min_width", r"expected name=value pairs"),
    ({"uids": "/nonexistent/subset.npy"}, r"uids='/nonexistent/subset.npy': no such file"),
])
def test_bad_filters_fail_clearly(two_stage: Built, bad: Any, message: str) -> None:
    ix = ClipIndex(two_stage[0])
    with pytest.raises(ValueError, match=message):
        ix.search_embedding(two_stage[1][0], k=5, filters=bad)


def test_filter_on_a_column_the_index_lacks(tmp_path: Path) -> None:
    vectors = _clustered(300)
    write_output_dir(tmp_path, vectors, [f"u{i}" for i in range(300)],
                     extra={schema.ORIGINAL_WIDTH: pa.array(np.full(300, 640), pa.int32())})
    run_index(str(tmp_path), IndexConfig(index_key="Flat", recall_queries=0))
    ix = ClipIndex(tmp_path)
    assert len(ix.search_embedding(vectors[0], k=5, filters={"min_width": 600})[0]) == 5
    assert ix.search_embedding(vectors[0], k=5, filters={"min_width": 641})[0] == []
    with pytest.raises(ValueError, match=r"need column\(s\) \['face_count'\], which this index "
                                         r"does not have \(it has \['width'\]\)"):
        ix.search_embedding(vectors[0], k=5, filters={"max_faces": 0})


def test_cli_query_filter_flags(two_stage: Built, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from clip_index.cli import main

    out, vectors, _, meta = two_stage
    (tmp_path / "q.json").write_text(json.dumps(vectors[0].tolist()))
    f = {"min_width": 1500, "max_faces": 1, "exclude_changed": True}
    assert main(["query", str(out), "--embedding", str(tmp_path / "q.json"), "-k", "7",
                 "--json", "--min-width", "1500", "--filters", "max_faces=1",
                 "--exclude-changed"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mask = _expected_mask(f, meta)
    assert len(rows) == 7 and all(mask[r["id"]] for r in rows)
    assert main(["query", str(out), "--embedding", str(tmp_path / "q.json"),
                 "--filters", '{"max_face": 1}']) == 2
    assert "unknown filter(s) ['max_face']" in capsys.readouterr().err


def test_retrieve_step_takes_filters(two_stage: Built, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from clip_index.config import RetrieveConfig
    from clip_index.search.retrieve import run_load_queries, run_retrieve

    out, vectors, uids, meta = two_stage
    np.save(tmp_path / "q.npy", vectors[[3, 70]])
    config = RetrieveConfig(num_images=6, filters='{"min_clip_l14_score": 0.35}')
    run_load_queries(str(tmp_path / "q.npy"), str(tmp_path / "qe"), config)
    run_retrieve(str(tmp_path / "qe"), str(out), str(tmp_path / "m"), str(tmp_path / "u"),
                 config)
    matches = pq.read_table(tmp_path / "m" / "matches.parquet").to_pylist()
    mask = _expected_mask({"min_clip_l14_score": 0.35}, meta)
    by_uid = {u: i for i, u in enumerate(uids)}
    assert len(matches) == 12 and all(mask[by_uid[m["uid"]]] for m in matches)
    with pytest.raises(ValueError, match="unknown filter"):
        run_retrieve(str(tmp_path / "qe"), str(out), str(tmp_path / "m2"),
                     str(tmp_path / "u2"), RetrieveConfig(filters="min_faces=0"))
