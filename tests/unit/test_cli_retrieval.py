"""CLI: `query` (batches, image files, embeddings, de-duplication, JSON), `retrieve` and `serve`
(a real process on 127.0.0.1, stopped by the test)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from clip_index.cli import main
from tests.support.images import image_bytes
from tests.support.outputs import build_tiny_index

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    out = tmp_path_factory.mktemp("cli")
    return out, build_tiny_index(out, n=30)


def test_query_batches_images_embeddings_json(tiny: tuple[Path, np.ndarray], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, vectors = tiny
    (tmp_path / "e.json").write_text(json.dumps(vectors[[4, 9]].tolist()))
    assert main(["query", str(out), "--embedding", str(tmp_path / "e.json"), "-k", "2",
                 "--json", "--deduplicate"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r[0]["uid"] for r in rows] == ["img-004", "img-009"] and len(rows[0]) == 2
    assert main(["query", str(out), "--text", "a red circle", "--text", "a cat", "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert "top 3 for 'a red circle'" in text and "top 3 for 'a cat'" in text
    (tmp_path / "q.png").write_bytes(image_bytes(40, 40, fmt="PNG"))
    assert main(["query", str(out), "--image", str(tmp_path / "q.png"), "--json", "-k", "4"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert main(["query", str(out), "--text", "a", "--image", "x.png"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_retrieve_command(tiny: tuple[Path, np.ndarray], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny
    (tmp_path / "p.jsonl").write_text('{"text": "a red circle"}\n{"text": "a blue square"}\n')
    assert main(["retrieve", str(tmp_path / "p.jsonl"), str(out), "--output-dir",
                 str(tmp_path / "r"), "--num-images", "5", "--deduplicate"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 2 and summary["matches"] == 10
    table = pq.read_table(summary["matches_file"])
    assert table.column_names == ["query", "rank", "uid", "url", "caption", "score"]


def test_serve_command_runs_a_server(tiny: tuple[Path, np.ndarray]) -> None:
    out, _ = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clip_index.cli", "serve", f"demo={out}",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]  # type: ignore
                assert time.monotonic() < deadline, "server did not start in 60 s"
                time.sleep(0.3)
        assert health["indices"]["demo"]["vectors"] == 30
        assert httpx.get(f"http://127.0.0.1:{port}/indices-list").json() == ["demo"]
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "clip_index.cli", "serve", "/nonexistent"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "expected a clip-index output folder" in bad.stderr


def test_query_image_url_blocked_is_a_clear_error(tiny: tuple[Path, np.ndarray],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny
    assert main(["query", str(out), "--image-url", "http://127.0.0.1:9/x.jpg"]) == 2
    assert "blocked_address" in capsys.readouterr().err


def test_retrieve_download_takes_the_stored_thumbnail_and_fetches_the_rest(
        tmp_path: Path, http_server, capsys: pytest.CaptureFixture[str]) -> None:
    """Images 0-14 have a thumbnail in the index folder and a dead URL (404): they come from the
    folder; images 15-29 have none and are fetched from their (live) URL."""
    from tests.support.thumbs import add_thumbnails

    bodies = [image_bytes(64, 48, (i * 8, 40, 90)) for i in range(30)]
    urls = [http_server.url(f"/gone-{i}.jpg") if i < 15 else
            http_server.add_bytes(f"/img-{i}.jpg", bodies[i]) for i in range(30)]
    out = tmp_path / "ix"
    vectors = build_tiny_index(out, n=30, urls=urls)
    add_thumbnails(out, {f"img-{i:03d}": bodies[i] for i in range(15)})
    np.save(tmp_path / "q.npy", vectors[[3, 20]])
    assert main(["retrieve", str(tmp_path / "q.npy"), str(out), "--output-dir", str(tmp_path / "r"),
                 "--num-images", "4", "--download", "--allow-private-networks"]) == 0
    summary = json.loads(capsys.readouterr().out)
    files = {p.name for p in (tmp_path / "r" / "images").iterdir()}
    stored = {f for f in files if f.endswith(".webp")}
    fetched = files - stored
    assert "img-003.webp" in stored and "img-020.jpg" in fetched
    assert all(int(f[4:7]) < 15 for f in stored) and all(int(f[4:7]) >= 15 for f in fetched)
    assert summary["image_counts"] == {"stored": len(stored), "fetched": len(fetched),
                                       "failed": 0}
    assert (tmp_path / "r" / "images" / "img-020.jpg").read_bytes() == bodies[20]
