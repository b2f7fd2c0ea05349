"""Opening index folders: the clip-index layout, the reference's published layout
(fondant-ai/datacomp-small-clip: unnormalised vectors, no manifest), and folders that are
neither."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clip_index.index.layout import CLIP_INDEX, REFERENCE, detect_layout
from clip_index.search.searcher import ClipIndex
from tests.support.outputs import make_output_dir, make_reference_dir


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_output_dir(tmp_path_factory.mktemp("out"))


def test_clip_index_layout_is_detected_and_finds_its_own_vectors(output_dir: Path) -> None:
    layout = detect_layout(str(output_dir))
    assert layout.kind == CLIP_INDEX and layout.normalised
    assert (layout.model, layout.pretrained) == ("tiny-clip", "none")
    index = ClipIndex(output_dir)
    assert not index.rescore
    import pyarrow.parquet as pq

    data = pq.read_table(output_dir / "data" / "part-00001.parquet")
    vector = np.asarray(data.column("embedding")[5].as_py(), dtype=np.float32)
    best = index.search_embedding(vector, k=3)[0][0]
    assert best.uid == data.column("uid")[5].as_py()
    assert best.score == pytest.approx(1.0, abs=1e-4)


def test_reference_layout_rescoring_gives_cosine_ranks(tmp_path: Path) -> None:
    vectors = make_reference_dir(tmp_path / "ref")
    layout = detect_layout(str(tmp_path / "ref"))
    assert layout.kind == REFERENCE and not layout.normalised
    assert (layout.model, layout.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert "not normalised" in layout.describe()
    index = ClipIndex(tmp_path / "ref")
    assert index.rescore and index.manifest["model"] == "ViT-B-32" and index.dim == 32
    norms = np.linalg.norm(vectors, axis=1)
    raw_first_is_self = 0
    for i in (0, 7, 42, 150, 299):
        # a query along stored vector i, at an arbitrary length: cosine 1 with i only
        results = index.search_embedding(vectors[i] / norms[i] * 3.0, k=5)[0]
        assert results[0].id == i
        assert results[0].score == pytest.approx(1.0, abs=1e-4)
        assert results[0].url == f"http://127.0.0.1/ref/{i}.jpg"  # id_mapping sorted by `i`
        assert results[0].uid is None and results[0].caption is None
        assert all(a.score >= b.score for a, b in zip(results, results[1:]))
        _, raw = index.index.search(vectors[i:i + 1] / norms[i], 1)
        raw_first_is_self += int(raw[0, 0] == i)
    # without the rescoring, long stored vectors would win some of these queries
    assert raw_first_is_self < 5


def test_reference_layout_with_ivf_index_and_image_path_column(tmp_path: Path) -> None:
    vectors = make_reference_dir(tmp_path / "ref", n=400, index_key="IVF4,Flat",
                                 url_column="image_path")
    index = ClipIndex(tmp_path / "ref")
    index.index.nprobe = 4
    assert index.rescore  # the IVF got a direct map, so stored vectors come back
    best = index.search_embedding(vectors[123], k=1)[0][0]
    assert (best.id, best.url) == (123, "http://127.0.0.1/ref/123.jpg")
    assert best.score == pytest.approx(1.0, abs=1e-4)


def test_reference_layout_text_query_uses_its_model(tmp_path: Path) -> None:
    make_reference_dir(tmp_path / "ref", n=50, dim=512)
    # the real weights can't be downloaded here: same model, random weights
    index = ClipIndex(tmp_path / "ref", pretrained="none")
    results = index.search_text("a cat on a sofa", k=3)
    assert index.model.name == "ViT-B-32" and index.model.dim == 512
    assert len(results) == 3 and all(-1.0 <= r.score <= 1.0 for r in results)


def test_folder_that_is_no_index_is_refused_with_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"holds notes.txt.*expected a clip-index output"):
        ClipIndex(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipIndex(tmp_path / "missing")


def test_manifest_without_index_says_the_index_step_is_missing(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"model": "tiny-clip",
                                                        "pretrained": "none"}))
    with pytest.raises(FileNotFoundError, match="index step has not run"):
        detect_layout(str(tmp_path))
