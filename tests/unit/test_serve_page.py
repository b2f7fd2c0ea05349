"""The server's search page in headless Chromium (Debian's `chromium`): a query typed in the URL
runs on load and shows thumbnails (loaded from the images' URLs), captions and scores."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clip_index.search.searcher import ClipIndex
from clip_index.search.server import ServeSettings, create_app
from tests.support.http_server import TestServer
from tests.support.images import image_bytes
from tests.support.live_server import LiveServer
from tests.support.outputs import build_tiny_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page_server(tmp_path: Path, http_server: TestServer) -> Iterator[LiveServer]:
    urls = [http_server.add_bytes(f"/img-{i}.jpg", image_bytes(64, 48, (200, i * 10, 40)))
            for i in range(24)]
    build_tiny_index(tmp_path / "ix", n=24, urls=urls)
    server = LiveServer(create_app({"ix": ClipIndex(tmp_path / "ix")})).start()
    yield server
    server.stop()


def dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: run "
                    "scripts/install-system-deps.sh (apt-get install chromium)")
def test_search_page_shows_thumbnails_captions_and_scores(page_server: LiveServer,
                                                          tmp_path: Path) -> None:
    dom = dump_dom(f"{page_server.url}/?q=a%20red%20circle", tmp_path / "profile")
    assert 'data-state="done"' in dom, dom[-3000:]
    cards = re.findall(r'<div class="card">(.*?)</div></div>', dom, re.S)
    assert len(cards) == 20  # the page asks for 20 by default; the index holds 24
    for card in cards:
        assert re.search(r'<img [^>]*src="http://127\.0\.0\.1:\d+/img-\d+\.jpg"', card)
        assert re.search(r'<div class="caption">picture number \d+</div>', card)
        assert re.search(r'<div class="score">score -?\d\.\d{3} · img-\d{3}', card)
    loaded = re.findall(r'data-loaded="(\d)"', dom)
    assert loaded.count("1") == 20  # every thumbnail was fetched and decoded by the browser
    assert re.search(r'<div id="status" class="">20 results in \d+ ms</div>', dom)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: run "
                    "scripts/install-system-deps.sh (apt-get install chromium)")
def test_search_page_shows_the_servers_error(tmp_path: Path) -> None:
    build_tiny_index(tmp_path / "ix", n=12)
    server = LiveServer(create_app({"ix": ClipIndex(tmp_path / "ix")},
                                   ServeSettings(max_num_images=5))).start()
    try:  # the page asks for 20 results, this server allows 5
        dom = dump_dom(f"{server.url}/?q=a%20red%20circle", tmp_path / "profile")
    finally:
        server.stop()
    assert 'data-state="error"' in dom and 'class="card"' not in dom
    assert re.search(r'<div id="status" class="error">error 422: .*num_images.*</div>', dom)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: run "
                    "scripts/install-system-deps.sh (apt-get install chromium)")
def test_search_page_shows_the_stored_thumbnails_when_the_image_host_is_gone(
        tmp_path: Path) -> None:
    """Link rot: the images' host is stopped before the search; the page shows every result
    from the thumbnails kept in the published folder (the URLs alone would all be broken)."""
    from tests.support.thumbs import add_thumbnails

    host = TestServer().start()
    bodies = [image_bytes(64, 48, (200, i * 10, 40)) for i in range(24)]
    urls = [host.add_bytes(f"/img-{i}.jpg", body) for i, body in enumerate(bodies)]
    build_tiny_index(tmp_path / "ix", n=24, urls=urls)
    # the download step's thumbnails, published beside the index
    add_thumbnails(tmp_path / "ix", {f"img-{i:03d}": body for i, body in enumerate(bodies)})
    host.stop()  # the image host is gone
    server = LiveServer(create_app({"ix": ClipIndex(tmp_path / "ix")})).start()
    try:
        dom = dump_dom(f"{server.url}/?q=a%20red%20circle", tmp_path / "profile")
    finally:
        server.stop()
    assert 'data-state="done"' in dom, dom[-3000:]
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == 20
    for img in imgs:
        assert re.search(r'src="thumbnail/ix/\d+"', img), img
        assert 'data-source="thumbnail"' in img and 'data-loaded="1"' in img, img
