"""The server and clip-retrieval's options it cannot honour: named in a response header
(400 with strict_options); the `filters` field (a field clip-retrieval's body does not have);
and LAION's aesthetic embeddings and violence prompts, applied as clip-retrieval applies them,
for an index built with an OpenAI CLIP model (heads seeded here, of the real shapes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from clip_index import schema
from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from clip_index.search.heads import IGNORED_HEADER, load_heads
from clip_index.search.searcher import ClipIndex
from clip_index.search.server import ServeSettings, create_app
from clip_index.vectors import normalise
from tests.support.live_server import LiveServer
from tests.support.outputs import random_unit, write_output_dir

DIM = 512  # OpenAI ViT-B/32, whose heads LAION published
N = 300
# what clip-retrieval's ClipClient sends by default
CLIENT_DEFAULTS = {"modality": "image", "num_images": 5, "indice_name": "openai",
                   "deduplicate": True, "use_safety_model": True,
                   "use_violence_detector": True, "aesthetic_score": 9,
                   "aesthetic_weight": 0.5}
OFF = {"use_safety_model": False, "use_violence_detector": False, "aesthetic_score": "",
       "aesthetic_weight": ""}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClipIndex, np.ndarray]:
    out = tmp_path_factory.mktemp("openai-index")
    vectors = random_unit(N, DIM, seed=3)
    widths = np.arange(N) * 10
    write_output_dir(out, vectors, [f"u{i:03d}" for i in range(N)], model="ViT-B-32",
                     pretrained="openai",
                     extra={schema.ORIGINAL_WIDTH: pa.array(widths, pa.int32())})
    run_index(str(out), IndexConfig(index_key="Flat", recall_queries=0))
    return ClipIndex(out, threads=1), vectors


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory: pytest.TempPathFactory,
              index: tuple[ClipIndex, np.ndarray]) -> Path:
    """LAION's file layout: rating0..9.npy (one (1, 512) mean embedding each) and the violence
    prompts (2, 512): prompt 1 = violent, here the direction of stored vector 7."""
    folder = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(0)
    for k in range(10):
        np.save(folder / f"rating{k}.npy", normalise(rng.standard_normal((1, DIM))
                                                     .astype(np.float32)))
    _, vectors = index
    np.save(folder / "violence_detection_vit_b_32.npy",
            np.stack([normalise(rng.standard_normal((1, DIM)).astype(np.float32))[0] * 0.2,
                      vectors[7]]).astype(np.float32))
    return folder


def _serve(ix: ClipIndex, **settings: Any) -> LiveServer:
    return LiveServer(create_app({"openai": ix}, ServeSettings(**settings))).start()


@pytest.fixture(scope="module")
def plain(index: tuple[ClipIndex, np.ndarray]) -> Iterator[LiveServer]:
    server = _serve(index[0])
    yield server
    server.stop()


def test_ignored_options_are_named_in_a_header(plain: LiveServer,
                                               index: tuple[ClipIndex, np.ndarray]) -> None:
    v = index[1][0].tolist()
    resp = httpx.post(f"{plain.url}/knn-service", json={**CLIENT_DEFAULTS, "embedding_input": v})
    assert resp.status_code == 200 and len(resp.json()) == 5
    assert resp.headers[IGNORED_HEADER] == ("use_safety_model, use_violence_detector, "
                                            "aesthetic_score, aesthetic_weight")
    off = httpx.post(f"{plain.url}/knn-service",
                     json={**CLIENT_DEFAULTS, **OFF, "embedding_input": v})
    assert off.status_code == 200 and IGNORED_HEADER not in off.headers
    assert [r["id"] for r in off.json()] == [r["id"] for r in resp.json()]  # answered as today


def test_strict_options_answers_400(index: tuple[ClipIndex, np.ndarray]) -> None:
    server = _serve(index[0], strict_options=True)
    try:
        v = index[1][0].tolist()
        resp = httpx.post(f"{server.url}/knn-service",
                          json={**CLIENT_DEFAULTS, "embedding_input": v})
        assert resp.status_code == 400
        detail = resp.json()["detail"]
        assert detail.startswith("use_safety_model, use_violence_detector, aesthetic_score")
        assert "OpenAI CLIP" in detail and "ViT-B-32/openai" in detail
        ok = httpx.post(f"{server.url}/knn-service",
                        json={**CLIENT_DEFAULTS, **OFF, "embedding_input": v})
        assert ok.status_code == 200
    finally:
        server.stop()


def test_filters_field(plain: LiveServer, index: tuple[ClipIndex, np.ndarray]) -> None:
    v = index[1][0].tolist()
    body = {**CLIENT_DEFAULTS, **OFF, "embedding_input": v, "num_images": 10}
    rows = httpx.post(f"{plain.url}/knn-service",
                      json={**body, "filters": {"min_width": 2900}}).json()
    assert sorted(r["id"] for r in rows) == list(range(290, 300))  # width = 10·id
    for bad, message in (({"min_widht": 1}, "unknown filter(s) ['min_widht']"),
                         ({"max_faces": 0}, "need column(s) ['face_count']"),
                         ({"min_width": "wide"}, "filter min_width='wide'"),
                         ({"uids": "/etc/passwd"}, "not accepted over HTTP")):
        resp = httpx.post(f"{plain.url}/knn-service", json={**body, "filters": bad})
        assert resp.status_code == 400 and message in resp.json()["detail"], resp.text


def test_laion_heads_are_applied_as_clip_retrieval_does(
        index: tuple[ClipIndex, np.ndarray], heads_dir: Path) -> None:
    ix, vectors = index
    heads = load_heads(ix, str(heads_dir), str(heads_dir / "violence_detection_vit_b_32.npy"))
    assert heads.aesthetic is not None and heads.aesthetic.shape == (10, DIM)
    server = _serve(ix, heads={"openai": heads})
    try:
        q = vectors[7]  # its nearest stored vectors include 7 itself, "violent"
        body = {**CLIENT_DEFAULTS, "embedding_input": q.tolist(), "deduplicate": False}
        resp = httpx.post(f"{server.url}/knn-service", json=body)
        assert resp.status_code == 200
        assert resp.headers[IGNORED_HEADER] == "use_safety_model"  # the rest applied
        shifted = normalise(normalise(q[None, :]) + 0.5 * heads.aesthetic[9][None, :])
        expected = [r.id for r in ix.search_embedding(shifted, 10)[0]]
        prompts = np.load(heads_dir / "violence_detection_vit_b_32.npy")
        violent = {i for i in expected
                   if np.argmax(prompts @ normalise(vectors[i][None, :])[0]) == 1}
        assert 7 in violent
        got = [r["id"] for r in resp.json()]
        assert got == [i for i in expected if i not in violent][:5]
        no_violence = httpx.post(f"{server.url}/knn-service",
                                 json={**body, "use_violence_detector": False}).json()
        assert [r["id"] for r in no_violence] == expected[:5]  # aesthetic shift alone
        assert 7 in expected[:5]
        health = httpx.get(f"{server.url}/health").json()["indices"]["openai"]
        assert health["heads"] == ["aesthetic", "violence"]
        assert health["filter_columns"] == ["width"]
    finally:
        server.stop()


def test_heads_refused_for_other_embedding_spaces(tmp_path: Path, heads_dir: Path) -> None:
    write_output_dir(tmp_path, random_unit(50, DIM), [f"u{i}" for i in range(50)],
                     model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    run_index(str(tmp_path), IndexConfig(index_key="Flat", recall_queries=0))
    with pytest.raises(ValueError, match=r"need an index built with an OpenAI CLIP model "
                                         r"\(pretrained='openai'\); this one is ViT-B-32 / "
                                         r"laion2b_s34b_b79k"):
        load_heads(ClipIndex(tmp_path), str(heads_dir), None)
