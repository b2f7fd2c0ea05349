"""Export every match: exact against brute force (numpy, float32, over the stored vectors) on
two-stage folders (float16 and float32 re-rank stores) and one-stage folders (flat, HNSW, a
IVF index read from data/), many prompts in one pass across several blocks; the cap per
prompt, the union, the DataComp uid subset, text and image prompts through the index's model,
an empty result, and clear errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clip_index import schema
from clip_index.cli import main
from clip_index.config import ConfigError, IndexConfig
from clip_index.index.build import run_index
from clip_index.index.rerank import RERANK_FILE, RerankStore
from clip_index.search.export import (
    DATACOMP_UID_DTYPE,
    MATCHES_FILE,
    SUMMARY_FILE,
    UIDS_FILE,
    Prompts,
    datacomp_uids,
    load_prompts,
    run_export,
    uid_strings,
)
from clip_index.search.export_config import ExportConfig
from clip_index.search.searcher import ClipIndex
from clip_index.vectors import normalise
from tests.support.images import image_bytes
from tests.support.outputs import TINY_DIM, build_tiny_index, write_output_dir

N = 3000


def _clustered(n: int, dim: int = TINY_DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim))
    x = centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, dim))
    return normalise(x.astype(np.float32))


def _hex_uids(n: int) -> list[str]:
    rng = np.random.default_rng(9)
    return [f"{int(a):016x}{int(b):016x}" for a, b in
            zip(rng.integers(0, 2**63, n), rng.integers(0, 2**63, n))]


def _two_stage(out: Path, dtype: str) -> np.ndarray:
    vectors = _clustered(N)
    cuts = [0, 1200, 1200, N]  # uneven shards, one empty
    write_output_dir(out, vectors, _hex_uids(N), [list(range(a, b)) for a, b in
                                                  zip(cuts, cuts[1:])])
    run_index(str(out), IndexConfig(two_stage_min_vectors=N, recall_queries=20,
                                    rerank_dtype=dtype))
    return vectors


@pytest.fixture(scope="module")
def fp16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    out = tmp_path_factory.mktemp("fp16")
    return out, _two_stage(out, "float16")


def _stored(out: Path) -> np.ndarray:
    """The exact float32 vectors a brute force scores: the re-rank store widened, or the
    normalised data/ vectors of a one-stage folder."""
    path = out / schema.FAISS_DIR / RERANK_FILE
    if path.exists():
        store = RerankStore(str(path))
        return store.take(np.arange(len(store)))
    index = ClipIndex(out)
    from clip_index.search.scan import open_vectors

    return np.concatenate([rows for _, rows in open_vectors(index).blocks(1 << 20)])


def _brute(x: np.ndarray, q: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    """Every pair whose inner product (float64: no rounding question at the threshold) of the
    normalised prompt and the stored float32 vector reaches the threshold."""
    scores = normalise(q).astype(np.float64) @ x.T.astype(np.float64)
    p, i = np.nonzero(scores >= threshold)
    return {(int(a), int(b)): float(scores[a, b]) for a, b in zip(p, i)}


def _exported(folder: Path) -> dict[tuple[int, int], float]:
    rows = pq.read_table(folder / MATCHES_FILE).to_pylist()
    pairs = {(r["prompt_index"], r["i"]): r["score"] for r in rows}
    assert len(pairs) == len(rows)  # no pair twice
    return pairs


def _prompts(x: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    near = x[rng.choice(len(x), 6, replace=False)] + 0.3 * rng.standard_normal((6, x.shape[1]))
    return np.concatenate([near, rng.standard_normal((4, x.shape[1]))]).astype(np.float32)


def _assert_exact(folder: Path, x: np.ndarray, q: np.ndarray, threshold: float) -> None:
    truth, got = _brute(x, q, threshold), _exported(folder)
    assert got.keys() == truth.keys()
    assert max((abs(got[k] - truth[k]) for k in truth), default=0.0) <= 1e-6
    # some prompts match, some vectors do not: the threshold cuts through the scores
    assert 0 < len(truth) < len(q) * len(x) // 2


def test_two_stage_float16_export_is_exact_against_brute_force_across_blocks(
        fp16: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, vectors = fp16
    x = _stored(out)
    assert not np.array_equal(x, vectors)  # float16 storage: brute force uses what is stored
    q = _prompts(vectors)
    threshold = float(np.quantile(normalise(q[:6]) @ x.T, 0.97))
    result = run_export(str(out), str(tmp_path), ExportConfig(threshold, block_rows=701),
                        Prompts(embeddings=q))
    _assert_exact(tmp_path, x, q, threshold)
    table = pq.read_table(tmp_path / MATCHES_FILE)
    assert result.matches == table.num_rows and result.vectors == N
    # ordered by prompt, then score descending, then faiss id; ranks from 1 within a prompt
    keys = list(zip(table.column("prompt_index").to_pylist(),
                    [-s for s in table.column("score").to_pylist()],
                    table.column("i").to_pylist()))
    assert keys == sorted(keys)
    mapping = ClipIndex(out).mapping
    row = table.slice(0, 1).to_pylist()[0]
    assert row["rank"] == 1 and row["prompt"] == "embedding-0"
    assert mapping.rows(np.array([row["i"]]))[0] == {k: row[k] for k in ("uid", "url",
                                                                          "caption")}
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["threshold"] == threshold and summary["vectors"] == N
    assert [p["matches"] for p in summary["prompts"]] == np.bincount(
        table.column("prompt_index").to_numpy(), minlength=len(q)).tolist()
    assert "re-rank store" in summary["source"] and summary["pairs_per_s"] > 0


def test_the_uid_subset_is_what_datacomps_resharder_reads(
        fp16: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, vectors = fp16
    q = _prompts(vectors, seed=4)
    threshold = float(np.quantile(normalise(q[:6]) @ vectors.T, 0.95))
    run_export(str(out), str(tmp_path), ExportConfig(threshold), Prompts(embeddings=q))
    matched = set(pq.read_table(tmp_path / MATCHES_FILE).column("uid").to_pylist())
    subset = np.load(tmp_path / UIDS_FILE, mmap_mode="r")  # as resharder.py loads it
    assert subset.dtype == np.dtype("u8,u8") and subset.ndim == 1
    assert len(subset) == len(matched) > 0 and set(uid_strings(np.asarray(subset))) == matched
    assert subset.tolist() == sorted(set(subset.tolist()))  # sorted (high, low), no repeats
    for uid in list(matched)[:20]:  # the resharder's lookup: found once
        key = np.array([divmod(int(uid, 16), 2**64)], DATACOMP_UID_DTYPE)[0]
        assert np.searchsorted(subset, key, "right") - np.searchsorted(subset, key, "left") == 1


def test_float32_store_max_per_prompt_and_union(tmp_path: Path) -> None:
    out = tmp_path / "f32"
    vectors = _two_stage(out, "float32")
    x = _stored(out)
    assert np.allclose(x, vectors, atol=1e-6)  # normalised again by the index step
    q = _prompts(vectors, seed=5)
    threshold = 0.45
    run_export(str(out), str(tmp_path / "all"), ExportConfig(threshold, block_rows=512),
               Prompts(embeddings=q))
    _assert_exact(tmp_path / "all", x, q, threshold)
    full = pq.read_table(tmp_path / "all" / MATCHES_FILE).to_pylist()
    run_export(str(out), str(tmp_path / "cap"), ExportConfig(threshold, max_per_prompt=7,
                                                             block_rows=97),
               Prompts(embeddings=q))
    capped = pq.read_table(tmp_path / "cap" / MATCHES_FILE).to_pylist()
    assert capped == [r for r in full if r["rank"] <= 7]  # each prompt's best 7, in order
    summary = json.loads((tmp_path / "cap" / SUMMARY_FILE).read_text())
    counts = np.bincount([r["prompt_index"] for r in full], minlength=len(q))
    assert [p["capped"] for p in summary["prompts"]] == (counts > 7).tolist()
    run_export(str(out), str(tmp_path / "union"), ExportConfig(threshold, union=True),
               Prompts(embeddings=q))
    union = pq.read_table(tmp_path / "union" / MATCHES_FILE).to_pylist()
    best: dict[int, dict[str, object]] = {}
    for r in full:  # full is by prompt: a later prompt wins only with a higher score
        if r["i"] not in best or r["score"] > best[r["i"]]["score"]:
            best[r["i"]] = r
    assert {r["i"]: (r["score"], r["prompt_index"]) for r in union} == {
        i: (r["score"], r["prompt_index"]) for i, r in best.items()}
    assert {r["i"]: r["prompts"] for r in union} == dict(zip(*np.unique(
        [r["i"] for r in full], return_counts=True)))
    assert [r["rank"] for r in union] == list(range(1, len(union) + 1))
    assert [(-r["score"], r["i"]) for r in union] == sorted((-r["score"], r["i"]) for r in union)


@pytest.mark.parametrize("index_key, source", [("Flat", "stored vectors"),
                                                ("HNSW16", "stored vectors"),
                                                ("IVF8,Flat", "data")])
def test_one_stage_folders_are_exact_too(tmp_path: Path, index_key: str, source: str) -> None:
    out = tmp_path / "index"
    vectors = build_tiny_index(out, n=300, index_key=index_key)
    x = _stored(out)
    q = _prompts(vectors, seed=6)
    run_export(str(out), str(tmp_path / "out"), ExportConfig(0.3, block_rows=64),
               Prompts(embeddings=q))
    _assert_exact(tmp_path / "out", x, q, 0.3)
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert source in summary["source"]
    # uids like img-001 are not DataComp's: no subset, and the summary says why
    assert not (tmp_path / "out" / UIDS_FILE).exists()
    assert "img-" in summary["uids_npy_skipped"] and summary["files"]["uids"] is None


def test_a_one_stage_index_without_flat_vectors_or_data_is_refused(tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "index"
    vectors = build_tiny_index(out, n=300, index_key="IVF8,Flat")
    data = out / schema.DATA_DIR
    shutil.copy(data / "part-00000.parquet", data / "part-00007.parquet")
    with pytest.raises(ValueError, match="holds 450 rows but the index holds 300 vectors"):
        run_export(str(out), str(tmp_path / "out"), ExportConfig(0.3),
                   Prompts(embeddings=vectors[:2]))
    shutil.rmtree(data)
    with pytest.raises(ValueError, match="not as one flat array.* no data/"):
        run_export(str(out), str(tmp_path / "out"), ExportConfig(0.3),
                   Prompts(embeddings=vectors[:2]))


def test_text_and_image_prompts_use_the_index_model(tmp_path: Path) -> None:
    out = tmp_path / "index"
    build_tiny_index(out, n=200)  # Flat: its search is exact, so it must agree
    image = tmp_path / "q.jpg"
    image.write_bytes(image_bytes(80, 60))
    index = ClipIndex(out)
    top = index.search_text("a red circle", k=10) + index.search_image(image, k=10)
    threshold = float(sorted(r.score for r in top)[len(top) // 2])
    assert main(["export", str(out), "--output-dir", str(tmp_path / "out"), "--threshold",
                 str(threshold), "--text", "a red circle", "--image", str(image)]) == 0
    rows = pq.read_table(tmp_path / "out" / MATCHES_FILE).to_pylist()
    for prompt, results in (("a red circle", top[:10]), (str(image), top[10:])):
        found = {r["i"]: r["score"] for r in rows if r["prompt"] == prompt}
        want = {r.id: r.score for r in results if r.score >= threshold + 1e-5}
        assert want and set(want) <= set(found)
        assert all(abs(found[i] - s) < 1e-5 for i, s in want.items())
        assert min(found.values()) >= np.float32(threshold)


def test_an_empty_result_still_writes_every_file(fp16: tuple[Path, np.ndarray],
                                                 tmp_path: Path) -> None:
    out, _ = fp16
    far = -np.ones((2, TINY_DIM), np.float32)
    result = run_export(str(out), str(tmp_path), ExportConfig(0.99), Prompts(embeddings=far))
    assert result.matches == 0 and result.unique_images == 0
    table = pq.read_table(tmp_path / MATCHES_FILE)
    assert table.num_rows == 0 and {"prompt", "uid", "score", "i"} <= set(table.column_names)
    subset = np.load(tmp_path / UIDS_FILE)
    assert subset.dtype == DATACOMP_UID_DTYPE and len(subset) == 0
    assert [p["matches"] for p in json.loads((tmp_path / SUMMARY_FILE).read_text())[
        "prompts"]] == [0, 0]


def test_bad_inputs_fail_before_any_work(fp16: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, vectors = fp16
    target = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"threshold=1.5: expected a cosine similarity in "
                                          r"\[-1, 1\]"):
        run_export(str(out), str(target), ExportConfig(1.5), Prompts(embeddings=vectors[:1]))
    with pytest.raises(ValueError, match="no prompts"):
        run_export(str(out), str(target), ExportConfig(0.5), Prompts())
    with pytest.raises(ValueError, match=r"shape \(1, 5\): expected \(n, 64\)"):
        run_export(str(out), str(target), ExportConfig(0.5),
                   Prompts(embeddings=np.ones((1, 5), np.float32)))
    with pytest.raises(ValueError, match="all zeros"):
        run_export(str(out), str(target), ExportConfig(0.5),
                   Prompts(embeddings=np.zeros((1, TINY_DIM), np.float32)))
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        run_export(str(tmp_path / "nowhere"), str(target), ExportConfig(0.5),
                   Prompts(embeddings=vectors[:1]))
    with pytest.raises(FileNotFoundError, match="image prompt"):
        run_export(str(out), str(target), ExportConfig(0.5), Prompts(images=("no.jpg",)))
    with pytest.raises(ConfigError, match="max_per_prompt=-1"):
        ExportConfig(0.5, max_per_prompt=-1).validate()
    assert not target.exists()
    assert main(["export", str(out), "--output-dir", str(target), "--threshold", "2"]) == 2


def test_prompt_files(tmp_path: Path) -> None:
    import pyarrow as pa

    (tmp_path / "p.txt").write_text("a cat\n\n  a dog \n")
    assert load_prompts(str(tmp_path / "p.txt"), ExportConfig(0.2)).texts == ("a cat", "a dog")
    images = load_prompts(str(tmp_path / "p.txt"), ExportConfig(0.2, prompt_kind="image"))
    assert images.images == ("a cat", "a dog") and not images.texts
    np.save(tmp_path / "e.npy", np.ones((3, 4), np.float32))
    assert load_prompts(str(tmp_path / "e.npy"), ExportConfig(0.2)).labels() == [
        "embedding-0", "embedding-1", "embedding-2"]
    pq.write_table(pa.table({"text": ["x", "y"], "embedding": [[1.0, 0.0], [0.0, 1.0]]}),
                   tmp_path / "e.parquet")
    loaded = load_prompts(str(tmp_path / "e.parquet"), ExportConfig(0.2))
    assert loaded.labels() == ["x", "y"] and loaded.embeddings is not None
    assert load_prompts(str(tmp_path / "e.parquet"),
                        ExportConfig(0.2, prompt_kind="text")).texts == ("x", "y")
    with pytest.raises(ValueError, match="prompt_kind='image' cannot read"):
        load_prompts(str(tmp_path / "e.npy"), ExportConfig(0.2, prompt_kind="image"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(str(tmp_path / "missing.txt"), ExportConfig(0.2))


def test_datacomp_uids_convert_exactly_or_say_why_not() -> None:
    import pyarrow as pa

    uids = ["ffffffffffffffff0000000000000001", "00000000000000010000000000000000",
            "ffffffffffffffff0000000000000001"]
    subset, why = datacomp_uids(pa.array(uids))
    assert why is None and subset is not None
    assert subset.tolist() == [(1, 0), (2**64 - 1, 1)]  # (high, low), sorted, de-duplicated
    assert uid_strings(subset) == sorted(set(uids))
    none, why = datacomp_uids(pa.array(["abc"]))
    assert none is None and why is not None and "'abc'" in why


def test_the_output_folder_may_be_any_fsspec_url(fp16: tuple[Path, np.ndarray]) -> None:
    import fsspec

    out, vectors = fp16
    run_export(str(out), "memory://export-test/out", ExportConfig(0.9),
               Prompts(embeddings=vectors[:3]))
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/export-test/out", detail=False)) == [
        MATCHES_FILE, SUMMARY_FILE, UIDS_FILE]  # written atomically: no temporary names left
    with fs.open("/export-test/out/" + MATCHES_FILE, "rb") as f:
        assert pq.read_table(f).num_rows >= 3  # each prompt is a stored vector: it matches
    fs.rm("/export-test", recursive=True)
