"""The server: clip-retrieval's own ClipClient works against it unchanged; bad requests get a
4xx with a message; payloads bounded; image_url through the guard; CORS closed by default."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from clip_index.config import DownloadConfig
from clip_index.search.searcher import ClipIndex
from clip_index.search.server import ServeSettings, create_app
from tests.support.http_server import TestServer
from tests.support.images import image_bytes
from tests.support.live_server import LiveServer
from tests.support.outputs import TINY_DIM, build_tiny_index

REPO = Path(__file__).resolve().parents[2]
CLIENT_VENV = REPO / "bench" / ".venvs" / "clip-retrieval" / "bin" / "python"


@pytest.fixture(scope="module")
def images() -> Iterator[TestServer]:
    server = TestServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           images: TestServer) -> Iterator[tuple[LiveServer, np.ndarray]]:
    out = tmp_path_factory.mktemp("served")
    urls = [images.add_bytes(f"/img-{i}.jpg", image_bytes(64, 48, (i * 4, 90, 160)))
            for i in range(60)]
    vectors = build_tiny_index(out, n=60, urls=urls)
    settings = ServeSettings(max_num_images=50, max_request_bytes=200_000,
                             max_image_bytes=100_000,
                             fetch=DownloadConfig(allow_private_networks=True, download_retries=0,
                                                  max_image_bytes=100_000))
    server = LiveServer(create_app({"tiny": ClipIndex(out, threads=1)}, settings)).start()
    yield server, vectors
    server.stop()


CLIENT_SCRIPT = """
import importlib.util, json, sys
import clip_retrieval  # noqa: only to locate the package; its __init__ is not run below
"""


def run_clip_client(url: str, calls: list[dict]) -> list:
    """clip-retrieval's clip_client.py, unchanged, in its own venv (its package __init__ pulls in
    flask/torch, which ClipClient does not use: the module is loaded from its file)."""
    if not CLIENT_VENV.exists():
        pytest.skip(f"{CLIENT_VENV} missing: run scripts/install-clip-retrieval-client.sh")
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.find_spec('clip_retrieval')\n"
        "path = spec.submodule_search_locations[0] + '/clip_client.py'\n"
        "s = importlib.util.spec_from_file_location('clip_client', path)\n"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
        "url, calls = sys.argv[1], json.loads(sys.argv[2])\n"
        "c = m.ClipClient(url=url, indice_name='tiny', num_images=5)\n"
        "print(json.dumps([c.query(**kw) for kw in calls]))\n")
    done = subprocess.run([str(CLIENT_VENV), "-c", script, url, json.dumps(calls)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_clip_retrieval_clip_client_works_unchanged(served: tuple[LiveServer, np.ndarray],
                                                    images: TestServer, tmp_path: Path) -> None:
    server, vectors = served
    query_image = tmp_path / "q.jpg"
    query_image.write_bytes(image_bytes(64, 48, (12, 90, 160)))
    by_text, by_vec, by_image, by_url = run_clip_client(f"{server.url}/knn-service", [
        {"text": "a red circle"}, {"embedding_input": vectors[7].tolist()},
        {"image": str(query_image)}, {"image": images.url("/img-3.jpg")}])
    assert len(by_text) == 5 and set(by_text[0]) >= {"id", "similarity", "url", "caption"}
    assert by_vec[0]["id"] == 7 and by_vec[0]["caption"] == "picture number 7"
    assert by_vec[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert by_vec[0]["url"].endswith("/img-7.jpg")
    assert [r["id"] for r in by_image] == [r["id"] for r in by_url]  # same pixels, two routes
    index_list = httpx.get(f"{server.url}/indices-list").json()
    assert index_list == ["tiny"]
    meta = httpx.post(f"{server.url}/metadata", json={"indice_name": "tiny", "ids": [7, 0]})
    assert meta.json()[0] == {"id": 7, "metadata": {
        "uid": "img-007", "url": by_vec[0]["url"], "caption": "picture number 7"}}
    health = httpx.get(f"{server.url}/health").json()
    assert health["indices"]["tiny"] == {"vectors": 60, "dim": TINY_DIM, "model": "tiny-clip",
                                         "filter_columns": [], "heads": []}


def test_num_result_ids_beyond_num_images_come_without_metadata(
        served: tuple[LiveServer, np.ndarray]) -> None:
    server, vectors = served
    rows = httpx.post(f"{server.url}/knn-service", json={
        "embedding_input": vectors[1].tolist(), "num_images": 2, "num_result_ids": 6,
        "indice_name": "tiny", "modality": "image"}).json()
    assert len(rows) == 6 and "url" in rows[1] and set(rows[2]) == {"id", "similarity"}


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 400, "exactly one of text"),
    ({"text": "a", "image_url": "http://x.example/a.jpg"}, 400, "exactly one of text"),
    ({"text": "a", "num_images": 0}, 422, "num_images"),
    ({"text": "a", "num_images": 10**6}, 422, "num_images"),
    ({"text": "a", "num_images": "many"}, 422, "num_images"),
    ({"embedding_input": [0.1, 0.2]}, 400, f"expected {TINY_DIM}"),
    ({"image": "%%% not base64"}, 400, "base64"),
    ({"image": base64.b64encode(b"not an image").decode()}, 400, "could not be decoded"),
    ({"text": "a", "indice_name": "laion5B"}, 404, "expected one of ['tiny']"),
    ({"text": "a", "modality": "text"}, 400, "image embeddings only"),
    ({"text": "a", "use_mclip": True}, 400, "use_mclip"),
    ({"text": "   "}, 400, "non-empty string"),
])
def test_bad_requests_get_a_4xx_with_a_message(served: tuple[LiveServer, np.ndarray],
                                               body: dict, status: int, message: str) -> None:
    server, _ = served
    resp = httpx.post(f"{server.url}/knn-service", json=body)
    assert resp.status_code == status, resp.text
    assert message in json.dumps(resp.json()["detail"])


def test_payloads_and_ids_are_bounded(served: tuple[LiveServer, np.ndarray]) -> None:
    server, _ = served
    huge = base64.b64encode(b"x" * 190_000).decode()  # under the body cap, over the image cap
    assert httpx.post(f"{server.url}/knn-service", json={"image": huge}).status_code == 413
    body = json.dumps({"text": "a" * 300_000})
    resp = httpx.post(f"{server.url}/knn-service", content=body,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "at most 200000 bytes" in resp.json()["detail"]
    assert httpx.post(f"{server.url}/knn-service", content=b"{not json",
                      headers={"Content-Type": "application/json"}).status_code == 422
    resp = httpx.post(f"{server.url}/metadata", json={"ids": [1, 60, -1]})
    assert resp.status_code == 400 and "0..59" in resp.json()["detail"]
    assert httpx.post(f"{server.url}/metadata", json={"ids": list(range(51))}).status_code == 422


def test_image_url_is_fetched_through_the_guard(tmp_path: Path, images: TestServer) -> None:
    out = tmp_path / "ix"
    build_tiny_index(out, n=10)
    big = images.add_bytes("/big.jpg", image_bytes(500, 500))
    strict = LiveServer(create_app({"ix": ClipIndex(out)})).start()  # default settings
    try:
        for url, status, message in [
            (images.url("/img-1.jpg"), 400, "blocked_address"),
            ("file:///etc/passwd", 400, "blocked_scheme"),
            ("http://169.254.169.254/latest/meta-data/", 400, "blocked_address"),
        ]:
            resp = httpx.post(f"{strict.url}/knn-service", json={"image_url": url})
            assert resp.status_code == status and message in resp.json()["detail"], resp.text
        # CORS closed: no Access-Control-Allow-Origin for a foreign origin
        pre = httpx.options(f"{strict.url}/knn-service", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers
    finally:
        strict.stop()
    small = ServeSettings(fetch=DownloadConfig(allow_private_networks=True, download_retries=0,
                                               max_image_bytes=2000),
                          cors_origins=("https://ok.example",))
    opened = LiveServer(create_app({"ix": ClipIndex(out)}, small)).start()
    try:
        resp = httpx.post(f"{opened.url}/knn-service", json={"image_url": big})
        assert resp.status_code == 413 and "too_large" in resp.json()["detail"]
        missing = httpx.post(f"{opened.url}/knn-service",
                             json={"image_url": images.url("/nope.jpg")})
        assert missing.status_code == 422 and "http_404" in missing.json()["detail"]
        pre = httpx.options(f"{opened.url}/knn-service", headers={
            "Origin": "https://ok.example", "Access-Control-Request-Method": "POST"})
        assert pre.headers["access-control-allow-origin"] == "https://ok.example"
    finally:
        opened.stop()


def test_an_oversized_body_gets_a_readable_413_from_a_real_client(
        served: tuple[LiveServer, np.ndarray]) -> None:
    """urllib sends a 50 MB body to a server whose limit is 200 kB: it reads the 413 and its
    message (without draining, the server closed while urllib was still sending, and urllib
    reported a connection reset instead)."""
    import urllib.error
    import urllib.request

    server, _ = served
    body = b'{"text": "' + b"a" * (50 * 1000 * 1000) + b'"}'
    request = urllib.request.Request(f"{server.url}/knn-service", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    detail = json.loads(caught.value.read())["detail"]
    assert f"request body of {len(body)} bytes: expected at most 200000 bytes" == detail
    # the connection stayed usable: the next request on the server works
    assert httpx.post(f"{server.url}/knn-service", json={"text": "a"},
                      timeout=60).status_code == 200
