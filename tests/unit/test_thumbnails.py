"""Thumbnails: the download step makes a small WebP of every image, the embed step carries it,
and the write step keeps it aligned with the index (faiss id i ↔ thumbnail row i); the server
names and serves them."""

from __future__ import annotations

import io as _io
from pathlib import Path

import pytest
from PIL import Image

from clip_index import io
from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from clip_index.index.thumbnails import THUMBNAILS_DIR, Thumbnails
from clip_index.index.write import run_write
from clip_index.search.searcher import ClipIndex
from tests.support.outputs import make_embedding_shards
from tests.support.thumbs import add_thumbnail_column, webp_of


def colour(n: int) -> tuple[int, int, int]:
    return (n * 2 % 256, 255 - n * 2 % 256, (n * 37) % 256)


def colour_jpeg(n: int) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (256, 192), colour(n)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def thumb_of(uid: str) -> bytes | None:
    """The download step's thumbnail of row `uid`'s image; the last row of every shard of 60
    has none (as when thumbnail_px is 0 for it, or its image was kept without one)."""
    n = int(uid[1:])
    return None if n % 60 == 59 else webp_of(colour_jpeg(n))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("thumbs")
    embeddings = make_embedding_shards(tmp / "emb", shards=3)
    add_thumbnail_column(embeddings, thumb_of)
    out = tmp / "out"
    result = run_write([str(embeddings)], str(out))
    assert result.as_metadata()["thumbnails"] == 3 * 57  # 58 embedded per shard, 1 not here
    assert result.as_metadata()["thumbnails_missing"] == 3
    run_index(str(out), IndexConfig(index_key="Flat", recall_queries=0))
    return out


def test_every_indexed_image_has_its_thumbnail_at_its_faiss_id(published: Path) -> None:
    index = ClipIndex(published)
    thumbs = Thumbnails(str(published), len(index))
    assert thumbs.available and len(index) == 3 * 58
    missing = []
    for i in range(len(index)):
        uid = index.metadata(i)["uid"]
        body = thumbs.get(i, uid)
        if body is None:
            missing.append(uid)
            continue
        img = Image.open(_io.BytesIO(body))
        assert img.format == "WEBP" and img.size == (128, 96)  # long side 128, ratio kept
        r, g, b = img.convert("RGB").getpixel((64, 48))
        want = colour(int(uid[1:]))
        assert max(abs(r - want[0]), abs(g - want[1]), abs(b - want[2])) <= 12, (uid, want)
    assert missing == ["u00059", "u00119", "u00179"]
    assert thumbs.get(0, "not-this-uid") is None  # a misaligned folder shows no wrong image


def test_thumbnails_can_be_turned_off(tmp_path: Path) -> None:
    embeddings = make_embedding_shards(tmp_path / "emb", shards=1)  # thumbnail_px=0: none
    result = run_write([str(embeddings)], str(tmp_path / "out"))
    assert "thumbnails" not in result.as_metadata()
    assert io.list_shards(str(tmp_path / "out" / THUMBNAILS_DIR)) == []


def test_server_names_and_serves_thumbnails(published: Path) -> None:
    from fastapi.testclient import TestClient

    from clip_index.search.server import create_app

    index = ClipIndex(published)
    client = TestClient(create_app({"ix": index}))
    vector = index.embeddings_of([5])[0].tolist()
    results = client.post("/knn-service", json={"embedding_input": vector,
                                                "num_images": 3}).json()
    assert results[0]["id"] == 5 and results[0]["thumbnail"] == "thumbnail/ix/5"
    resp = client.get("/" + results[0]["thumbnail"])
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/webp"
    assert Image.open(_io.BytesIO(resp.content)).size == (128, 96)
    last = len(index) - 1  # u00179: no image was downloaded for it
    assert client.get(f"/thumbnail/ix/{last}").status_code == 404
    assert client.get(f"/thumbnail/ix/{len(index)}").status_code == 404
    meta = client.post("/metadata", json={"ids": [5]}).json()
    assert meta[0]["metadata"]["thumbnail"] == "thumbnail/ix/5"
