"""The download step against every failure kind of the open web, served by a real local server:
each row leaves with the expected status and error kind, none crashes or hangs the shard."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clip_index import schema
from clip_index.config import DownloadConfig
from clip_index.download.step import download_shard
from tests.support import images, routes
from tests.support.http_server import TestServer

JPEG = images.image_bytes(64, 48)
BIG_JPEG = images.noisy_jpeg(1200, 900)
HUGE_JPEG = images.noisy_jpeg(2400, 1800)

MAX_BYTES = (len(BIG_JPEG) + len(HUGE_JPEG)) // 2
Check = Callable[[dict[str, Any]], None]


def _write_urls(path: Path, urls: list[tuple[str, str | None]]) -> Path:
    table = pa.Table.from_pylist(
        [{"uid": uid, "url": url, "caption": f"caption {uid}"} for uid, url in urls],
        schema=schema.URLS_SCHEMA)
    pq.write_table(table, path)
    return path


def _run(tmp_path: Path, urls: list[tuple[str, str | None]], **overrides: Any
         ) -> tuple[dict[str, dict[str, Any]], Any]:
    config = DownloadConfig(**{"allow_private_networks": True, "timeout_s": 2.0,
                               "download_retries": 1, "image_size": 32, **overrides})
    src = _write_urls(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out" / "part-00000.parquet"
    stats = download_shard(str(src), str(out), config)
    rows = pq.read_table(out).to_pylist()
    by_uid = {r["uid"]: r for r in rows}
    assert len(rows) == len(urls) == len(by_uid), "every row exactly once"
    assert stats.rows == len(urls)
    return by_uid, stats


def _decoded(row: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(row["image"]))


def _colour_at_centre(row: dict[str, Any]) -> tuple[int, ...]:
    img = _decoded(row).convert("RGB")
    return img.getpixel((img.width // 2, img.height // 2))  # type: ignore[return-value]


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 30) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# (uid, route setup → url, expected status, expected error kind or None, extra check)
Case = tuple[str, Callable[[TestServer], str | None], str, str | None, Check | None]


def _lying_type(s: TestServer) -> str:
    return s.add_bytes("/lying.png", images.image_bytes(40, 40, fmt="PNG"), "text/plain")


def _chain(s: TestServer) -> str:
    s.add_bytes("/chain/end.jpg", JPEG)
    s.add("/chain/2", routes.redirect("/chain/end.jpg", 307))
    s.add("/chain/1", routes.redirect(s.url("/chain/2"), 301))
    return s.add("/chain/0", routes.redirect("1", 302))  # relative Location


def _loop(s: TestServer) -> str:
    s.add("/loop/b", routes.redirect("/loop/a"))
    return s.add("/loop/a", routes.redirect("/loop/b"))


def _long_chain(s: TestServer) -> str:
    for i in range(10):
        s.add(f"/long/{i}", routes.redirect(f"/long/{i + 1}"))
    return s.url("/long/0")


def _size(width: int, height: int) -> Check:
    def check(row: dict[str, Any]) -> None:
        assert (row["width"], row["height"]) == (width, height)
        assert _decoded(row).size == (width, height)
    return check


def _colour(rgb: tuple[int, int, int]) -> Check:
    def check(row: dict[str, Any]) -> None:
        assert _close(_colour_at_centre(row), rgb), _colour_at_centre(row)
    return check


def _exif(row: dict[str, Any]) -> None:
    # stored 80x40 with orientation 6: displayed (and output) portrait 40x80 → 32x64
    assert (row["original_width"], row["original_height"]) == (40, 80)
    assert (row["width"], row["height"]) == (32, 64)


CASES: list[Case] = [
    ("ok", lambda s: s.add_bytes("/ok.jpg", BIG_JPEG), "success", None, _size(43, 32)),
    ("404", lambda s: s.url("/missing.jpg"), "failed_to_download", "http_404", None),
    ("410", lambda s: s.add("/gone", routes.status(410)), "failed_to_download", "http_410", None),
    ("500", lambda s: s.add("/err", routes.status(500)), "failed_to_download", "http_500", None),
    ("503-retry-after", lambda s: s.add("/busy", routes.fail_then([503], JPEG,
                                                                   {"Retry-After": "1"})),
     "success", None, None),
    ("429-backoff", lambda s: s.add("/slow-down", routes.fail_then([429], JPEG)),
     "success", None, None),
    ("refused", lambda s: f"http://127.0.0.1:{routes.free_port()}/x.jpg",
     "failed_to_download", "connection_error", None),
    ("reset", lambda s: s.add("/reset", routes.reset_mid_body(BIG_JPEG)),
     "failed_to_download", "connection_error", None),
    ("stall", lambda s: s.add("/stall", routes.headers_then_stall()),
     "failed_to_download", "timeout", None),
    ("trickle", lambda s: s.add("/trickle", routes.trickle()),
     "failed_to_download", "timeout", None),
    ("endless", lambda s: s.add("/endless", routes.endless()),
     "failed_to_download", "too_large", None),
    ("too-large", lambda s: s.add_bytes("/large.jpg", HUGE_JPEG), "failed_to_download",
     "too_large", None),
    ("chain", _chain, "success", None, _size(43, 32)),
    ("loop", _loop, "failed_to_download", "redirect_loop", None),
    ("long-chain", _long_chain, "failed_to_download", "too_many_redirects", None),
    ("no-location", lambda s: s.add("/noloc", routes.status(302)), "failed_to_download",
     "http_302", None),
    ("lying-type", _lying_type, "success", None, _size(32, 32)),
    ("html", lambda s: s.add_bytes("/page.jpg", b"<html><body>hi</body></html>", "image/jpeg"),
     "failed_to_decode", "decode_error", None),
    ("truncated", lambda s: s.add_bytes("/trunc.jpg", BIG_JPEG[: len(BIG_JPEG) // 2]),
     "failed_to_decode", "decode_error", None),
    ("bomb", lambda s: s.add_bytes("/bomb.png", images.png_bomb(), "image/png"),
     "failed_to_decode", "decompression_bomb", None),
    ("cmyk", lambda s: s.add_bytes("/cmyk.jpg", images.cmyk_jpeg()), "success", None,
     _colour((255, 0, 0))),  # C=0 M=Y=100% is red
    ("palette", lambda s: s.add_bytes("/p.png", images.palette_png(), "image/png"),
     "success", None, _colour((0, 0, 255))),
    ("palette-alpha", lambda s: s.add_bytes("/pa.png", images.palette_png(True), "image/png"),
     "success", None, _colour((255, 255, 255))),
    ("rgba", lambda s: s.add_bytes("/rgba.png", images.image_bytes(
        40, 40, (255, 0, 0, 0), "PNG", "RGBA"), "image/png"), "success", None,
     _colour((255, 255, 255))),
    ("la", lambda s: s.add_bytes("/la.png", images.image_bytes(
        40, 40, (0, 255), "PNG", "LA"), "image/png"), "success", None, _colour((0, 0, 0))),
    ("16bit", lambda s: s.add_bytes("/16.png", images.png_16bit(), "image/png"), "success",
     None, _colour((128, 128, 128))),
    ("gif", lambda s: s.add_bytes("/anim.gif", images.animated_gif(), "image/gif"), "success",
     None, _colour((255, 0, 0))),
    ("webp", lambda s: s.add_bytes("/x.webp", images.image_bytes(
        64, 64, (0, 0, 255), "WEBP"), "image/webp"), "success", None,
     _colour((0, 0, 255))),
    ("exif", lambda s: s.add_bytes("/exif.jpg", images.exif_rotated_jpeg()), "success", None,
     _exif),
    ("tiny", lambda s: s.add_bytes("/tiny.jpg", images.image_bytes(4, 4)), "filtered",
     "too_small", None),
    ("1px-wide", lambda s: s.add_bytes("/wide.png", images.image_bytes(
        2000, 1, fmt="PNG"), "image/png"), "filtered", "too_small", None),
    ("elongated", lambda s: s.add_bytes("/strip.png", images.image_bytes(
        3000, 20, fmt="PNG"), "image/png"), "filtered", "aspect_ratio", None),
    ("unicode", lambda s: (s.add_bytes("/img/café ☕.jpg", JPEG),
                           s.url("/img/café ☕.jpg"))[1], "success", None, None),
    ("percent", lambda s: (s.add_bytes("/img/thé à.jpg", JPEG),
                           s.url("/img/th%C3%A9%20%C3%A0.jpg"))[1], "success", None, None),
    ("long-url", lambda s: s.url("/" + "a" * 20_000 + ".jpg"), "failed_to_download",
     "invalid_url", None),
    ("empty", lambda s: "", "failed_to_download", "invalid_url", None),
    ("null", lambda s: None, "failed_to_download", "invalid_url", None),
    ("spaces", lambda s: "   ", "failed_to_download", "invalid_url", None),
    ("no-scheme", lambda s: "example.com/cat.jpg", "blocked", "blocked_scheme", None),
    ("no-host", lambda s: "http:///cat.jpg", "failed_to_download", "invalid_url", None),
    ("bad-ipv6", lambda s: "http://[::1/cat.jpg", "failed_to_download", "invalid_url", None),
    ("bad-port", lambda s: "http://127.0.0.1:99999/x.jpg", "failed_to_download", "invalid_url",
     None),
    ("file", lambda s: "file:///etc/passwd", "blocked", "blocked_scheme", None),
    ("ftp", lambda s: "ftp://127.0.0.1/x.jpg", "blocked", "blocked_scheme", None),
    ("javascript", lambda s: "javascript:alert(1)", "blocked", "blocked_scheme", None),
]


def test_every_failure_kind_in_one_shard(tmp_path: Path, http_server: TestServer) -> None:
    urls = [(uid, make(http_server)) for uid, make, *_ in CASES]
    start = time.monotonic()
    rows, stats = _run(tmp_path, urls, max_image_bytes=MAX_BYTES, min_image_size=8,
                       max_aspect_ratio=20.0, timeout_s=1.5)
    elapsed_s = time.monotonic() - start
    problems = []
    for uid, _, want_status, want_kind, check in CASES:
        row = rows[uid]
        kind = (row["error"] or "").split(":", 1)[0] or None
        if (row["status"], kind) != (want_status, want_kind):
            problems.append(f"{uid}: got {row['status']} / {row['error']!r}, "
                            f"want {want_status} / {want_kind}")
            continue
        if want_status == "success":
            assert row["image"] and row["sha256"] and row["error"] is None, uid
            if check:
                check(row)
        else:
            assert row["image"] is None and row["error"], uid
    assert not problems, "\n".join(problems)
    # the two stalls each get timeout_s × (retries + 1) plus backoff: the shard must not wait
    # longer than that (all rows run concurrently)
    assert elapsed_s < 15, f"shard took {elapsed_s:.1f}s"
    assert stats.successes == sum(1 for c in CASES if c[2] == "success")
    assert (stats.errors["http_404"], stats.errors["timeout"]) == (1, 2), stats.errors
    assert http_server.hits["/busy"] == 2 and http_server.hits["/slow-down"] == 2
    assert http_server.hits["/err"] == 2  # retried once, then given up
    assert http_server.hits["/missing.jpg"] == 1  # 404 is not retried
    # max_redirects=5: the first request and 5 hops, no retry (a redirect chain is final)
    assert http_server.hits["/long/5"] == 1 and "/long/6" not in http_server.hits


def test_retry_after_is_honoured(tmp_path: Path, http_server: TestServer) -> None:
    url = http_server.add("/busy", routes.fail_then([503], JPEG, {"Retry-After": "2"}))
    start = time.monotonic()
    rows, _ = _run(tmp_path, [("a", url)])
    assert rows["a"]["status"] == "success"
    assert time.monotonic() - start >= 2.0


def test_429_then_gives_up_after_retries(tmp_path: Path, http_server: TestServer) -> None:
    url = http_server.add("/limit", routes.status(429, {"Retry-After": "0"}))
    rows, stats = _run(tmp_path, [("a", url)], download_retries=2)
    assert rows["a"]["status"] == "failed_to_download"
    assert rows["a"]["error"].startswith("http_429")
    assert http_server.hits["/limit"] == 3
    assert stats.errors == {"http_429": 1}


def test_too_large_by_content_length_reads_no_body(tmp_path: Path,
                                                   http_server: TestServer) -> None:
    url = http_server.add_bytes("/large.jpg", BIG_JPEG)
    rows, _ = _run(tmp_path, [("a", url)], max_image_bytes=1000)
    assert rows["a"]["error"].startswith("too_large: Content-Length")


def test_opt_out_before_the_body(tmp_path: Path, http_server: TestServer) -> None:
    urls = [
        ("noai", http_server.add("/noai", routes.endless(headers={"X-Robots-Tag": "noai"}))),
        ("scoped", http_server.add_bytes("/scoped.jpg", JPEG,
                                         headers={"X-Robots-Tag": "clip-index: noimageai"})),
        ("other-agent", http_server.add_bytes("/other.jpg", JPEG,
                                              headers={"X-Robots-Tag": "otherbot: noai"})),
        ("noindex", http_server.add_bytes("/noindex.jpg", JPEG,
                                          headers={"X-Robots-Tag": "noindex, nofollow"})),
    ]
    rows, stats = _run(tmp_path, urls)
    assert rows["noai"]["status"] == "opted_out"  # an endless body: decided on the headers
    assert rows["scoped"]["status"] == "opted_out"
    assert rows["other-agent"]["status"] == "success"
    assert rows["noindex"]["status"] == "success"
    assert stats.statuses["opted_out"] == 2
    rows, _ = _run(tmp_path, urls[1:2], respect_opt_out=False)
    assert rows["scoped"]["status"] == "success"


def test_per_host_limit_and_user_agent(tmp_path: Path, http_server: TestServer) -> None:
    probe = routes.ConcurrencyProbe(JPEG)
    http_server.add("/probe", probe)
    urls = [(str(i), http_server.url(f"/probe?i={i}")) for i in range(24)]
    rows, stats = _run(tmp_path, urls, per_host_concurrency=3, concurrency=64)
    assert stats.successes == 24
    assert probe.peak == 3
    (agent,) = probe.user_agents
    assert agent.startswith("clip-index/") and "http" in agent


def test_resize_modes(tmp_path: Path, http_server: TestServer) -> None:
    url = http_server.add_bytes("/ok.jpg", BIG_JPEG)  # 1200 x 900
    for mode, size in (("keep_ratio", (43, 32)), ("center_crop", (32, 32)),
                       ("border", (32, 32)), ("no", (1200, 900))):
        rows, _ = _run(tmp_path, [("a", url)], resize_mode=mode)
        assert (rows["a"]["width"], rows["a"]["height"]) == size, mode
        assert (rows["a"]["original_width"], rows["a"]["original_height"]) == (1200, 900)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_encode_formats(tmp_path: Path, http_server: TestServer, fmt: str) -> None:
    url = http_server.add_bytes("/ok.jpg", BIG_JPEG)
    rows, _ = _run(tmp_path, [("a", url)], encode_format=fmt)
    assert _decoded(rows["a"]).format == fmt.upper()


def test_max_image_pixels(tmp_path: Path, http_server: TestServer) -> None:
    url = http_server.add_bytes("/ok.jpg", BIG_JPEG)  # 1200 x 900 = 1.08 MP
    rows, _ = _run(tmp_path, [("a", url)], max_image_pixels=1_000_000)
    assert rows["a"]["status"] == "failed_to_decode"
    assert rows["a"]["error"].startswith("decompression_bomb: 1200x900 passes")


def test_waiting_for_a_busy_host_is_not_a_timeout(tmp_path: Path,
                                                  http_server: TestServer) -> None:
    # 12 rows on one host, 2 at a time, 0.4 s each: the last ones wait ~2 s for their turn,
    # longer than timeout_s, yet none of them timed out on the server
    url = http_server.add("/slow.jpg", routes.slow_image(JPEG, 0.4))
    rows, stats = _run(tmp_path, [(str(i), f"{url}?i={i}") for i in range(12)],
                       per_host_concurrency=2, timeout_s=1.0, download_retries=0)
    assert stats.successes == 12, stats.errors
