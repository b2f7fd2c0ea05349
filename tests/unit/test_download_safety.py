"""Safety and resilience of the download step: the address guard (also on redirects), a decode
worker that dies, and a run killed mid-shard that resumes with every row exactly once."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clip_index import guard, schema
from clip_index.config import DownloadConfig
from clip_index.download import step as download
from clip_index.download.decoder import MAX_DEATHS_BEFORE_ANY_IMAGE, DecodePool, DecoderUnavailable
from clip_index.download.step import download_shard, run_download
from tests.support import images, routes
from tests.support.crashing import crash_on_marker
from tests.support.http_server import TestServer

JPEG = images.image_bytes(64, 48)


def _shard(tmp_path: Path, urls: list[str], **overrides: Any) -> dict[str, dict[str, Any]]:
    src = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"uid": str(i), "url": u, "caption": None} for i, u in enumerate(urls)],
        schema=schema.URLS_SCHEMA), src)
    out = tmp_path / "out" / "part-00000.parquet"
    download_shard(str(src), str(out), DownloadConfig(**{"timeout_s": 3.0, "download_retries": 0,
                                                         **overrides}))
    return {r["url"]: r for r in pq.read_table(out).to_pylist()}


def test_private_addresses_blocked_by_default(tmp_path: Path, http_server: TestServer) -> None:
    http_server.add_bytes("/x.jpg", JPEG)
    port = http_server.port
    urls = [f"http://127.0.0.1:{port}/x.jpg", f"http://localhost:{port}/x.jpg",
            "http://169.254.169.254/latest/meta-data/", f"http://[::1]:{port}/x.jpg",
            f"http://[::ffff:127.0.0.1]:{port}/x.jpg",
            f"http://0.0.0.0:{port}/x.jpg", "http://10.0.0.1/x.jpg", "http://224.0.0.1/x.jpg",
            "http://[fe80::1]/x.jpg"]
    rows = _shard(tmp_path, urls)
    for url in urls:
        assert rows[url]["status"] == "blocked", (url, rows[url]["error"])
        assert rows[url]["error"].startswith("blocked_address"), rows[url]["error"]
    # a decimal IPv4 host: refused as a URL (yarl) before any resolution
    odd = _shard(tmp_path, [f"http://2130706433:{port}/x.jpg"])
    assert next(iter(odd.values()))["status"] in ("blocked", "failed_to_download")
    assert "/x.jpg" not in http_server.hits  # nothing reached the server
    allowed = _shard(tmp_path, urls[:2], allow_private_networks=True)
    assert {r["status"] for r in allowed.values()} == {"success"}


def test_every_redirect_hop_is_checked(tmp_path: Path, http_server: TestServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # treat the test server's 127.0.0.1 as public, and nothing else that is private
    real = guard.is_public_address
    monkeypatch.setattr(guard, "is_public_address",
                        lambda address: address == "127.0.0.1" or real(address))
    ok = http_server.add_bytes("/ok.jpg", JPEG)
    to_metadata = http_server.add(
        "/r1", routes.redirect("http://169.254.169.254/computeMetadata/v1/"))
    to_private = http_server.add("/r2", routes.redirect("http://10.1.2.3/x.jpg", 307))
    to_file = http_server.add("/r3", routes.redirect("file:///etc/passwd"))
    rows = _shard(tmp_path, [ok, to_metadata, to_private, to_file])
    assert rows[ok]["status"] == "success"
    for url, kind in ((to_metadata, "blocked_address"), (to_private, "blocked_address"),
                      (to_file, "blocked_scheme")):
        assert rows[url]["status"] == "blocked", rows[url]
        assert rows[url]["error"].startswith(kind)


def test_a_dead_decode_worker_costs_one_row() -> None:
    async def main() -> tuple[list[Any], int]:
        async with DecodePool(DownloadConfig(), workers=2, batch_size=4,
                              function=crash_on_marker) as pool:
            bodies = [f"ok-{i}".encode() for i in range(20)]
            bodies.insert(7, b"CRASH")
            results = await asyncio.gather(*(pool.process(b) for b in bodies))
            after = await pool.process(b"still-working")
            return [*results, after], pool.restarts

    results, restarts = asyncio.run(main())
    assert results[7] == ("failed_to_decode",
                          "decoder_crashed: the decoding process died on this image")
    assert results[:7] + results[8:-1] == [("success", f"ok-{i}") for i in range(20)]
    assert results[-1] == ("success", "still-working")
    assert restarts >= 1


def test_workers_that_cannot_run_stop_the_pool_instead_of_failing_every_row() -> None:
    async def main() -> tuple[list[Any], int]:
        async with DecodePool(DownloadConfig(), workers=2, batch_size=4,
                              function=crash_on_marker) as pool:
            results = await asyncio.gather(*(pool.process(f"CRASH-{i}".encode())
                                             for i in range(40)), return_exceptions=True)
            with pytest.raises(DecoderUnavailable):  # and stays stopped
                await pool.process(b"fine")
            return results, pool.restarts

    results, restarts = asyncio.run(main())
    assert restarts == MAX_DEATHS_BEFORE_ANY_IMAGE  # not one restart per row
    stopped = [r for r in results if isinstance(r, DecoderUnavailable)]
    # a body confirmed in quarantine before the third death keeps its decoder_crashed row
    assert len(stopped) >= len(results) - MAX_DEATHS_BEFORE_ANY_IMAGE
    assert all(r == ("failed_to_decode",
                     "decoder_crashed: the decoding process died on this image")
               for r in results if not isinstance(r, DecoderUnavailable))
    assert "died 3 times before decoding any image" in str(stopped[0])


def test_a_shard_whose_decoder_cannot_run_fails_with_the_reason(
        tmp_path: Path, http_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard stops with the reason (and no output that looks complete) rather than writing
    every row as a decoder crash that a re-run would then skip as done."""
    url = http_server.add_bytes("/x.jpg", b"CRASH, as every body does in a broken decoder")
    monkeypatch.setattr(download, "DecodePool",
                        functools.partial(DecodePool, function=crash_on_marker))
    with pytest.raises(DecoderUnavailable, match="cannot run in this environment"):
        _shard(tmp_path, [f"{url}?i={i}" for i in range(30)], allow_private_networks=True)
    assert not (tmp_path / "out" / "part-00000.parquet").exists()


_CHILD = """
import sys
from clip_index.config import DownloadConfig
from clip_index.download.step import download_shard
if __name__ == "__main__":
    download_shard(sys.argv[1], sys.argv[2], DownloadConfig(
        allow_private_networks=True, concurrency=8, checkpoint_rows=20, image_size=32))
"""


def test_killed_mid_shard_resumes_with_every_row_once(tmp_path: Path,
                                                      http_server: TestServer) -> None:
    n = 300
    urls = [http_server.add(f"/img/{i}.jpg", routes.slow_image(JPEG, 0.05)) for i in range(n)]
    src = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"uid": f"u{i}", "url": u, "caption": f"c{i}"} for i, u in enumerate(urls)],
        schema=schema.URLS_SCHEMA), src)
    out = tmp_path / "out" / "part-00000.parquet"
    partial = tmp_path / "out" / ".part-00000.parquet.partial"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(out)],
                             start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(partial.glob("rows-*.arrow"))) < 3:
            assert child.poll() is None, "the child ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the downloader, its forkserver and workers
        child.wait()
    assert not out.exists()
    fetched_before = sum(http_server.hits.values())
    assert 60 <= fetched_before < n

    stats = download_shard(str(src), str(out), DownloadConfig(
        allow_private_networks=True, concurrency=8, checkpoint_rows=20, image_size=32))
    table = pq.read_table(out)
    assert sorted(table.column("uid").to_pylist()) == sorted(f"u{i}" for i in range(n))
    assert set(table.column("status").to_pylist()) == {"success"}
    assert stats.rows == n and stats.successes == n
    refetched = sum(1 for count in http_server.hits.values() if count > 1)
    # only rows that were in flight or in the unsaved chunk are fetched twice
    assert refetched <= 20 + 8 * 2, refetched
    assert not partial.exists()


def test_rerun_skips_a_complete_shard(tmp_path: Path, http_server: TestServer) -> None:
    urls_dir, out_dir = tmp_path / "urls", tmp_path / "images"
    urls_dir.mkdir()
    url = http_server.add_bytes("/a.jpg", JPEG)
    pq.write_table(pa.Table.from_pylist([{"uid": "a", "url": url, "caption": None}],
                                        schema=schema.URLS_SCHEMA), urls_dir / "part-00003.parquet")
    config = DownloadConfig(allow_private_networks=True)
    first = run_download(str(urls_dir), [3], str(out_dir), config)
    assert first.shards[0].successes == 1 and not first.shards[0].skipped
    meta = first.as_metadata()
    assert meta["images_per_s"] > 0 and meta["statuses"] == {"success": 1}
    assert meta["bytes"] > 0
    second = run_download(str(urls_dir), [3], str(out_dir), config)
    assert second.shards[0].skipped and http_server.hits["/a.jpg"] == 1


def test_stats_recounted_when_killed_before_they_were_written(
        tmp_path: Path, http_server: TestServer) -> None:
    urls_dir, out_dir = tmp_path / "urls", tmp_path / "images"
    urls_dir.mkdir()
    rows = [{"uid": "a", "url": http_server.add_bytes("/a.jpg", JPEG), "caption": None},
            {"uid": "b", "url": http_server.url("/missing.jpg"), "caption": None}]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.URLS_SCHEMA),
                   urls_dir / "part-00000.parquet")
    config = DownloadConfig(allow_private_networks=True)
    first = run_download(str(urls_dir), [0], str(out_dir), config)
    (out_dir / "part-00000_stats.json").unlink()  # as if killed just before writing it
    second = run_download(str(urls_dir), [0], str(out_dir), config)
    assert http_server.hits["/a.jpg"] == 1  # not downloaded again
    assert second.shards[0].statuses == first.shards[0].statuses == {"success": 1,
                                                             "failed_to_download": 1}
    assert second.shards[0].bytes == first.shards[0].bytes > 0
    assert (out_dir / "part-00000_stats.json").exists()


def test_a_changed_input_discards_the_checkpoint(tmp_path: Path,
                                                 http_server: TestServer) -> None:
    from clip_index.download.checkpoint import ShardCheckpoint

    out = tmp_path / "part-00000.parquet"
    checkpoint = ShardCheckpoint(str(out), schema.IMAGES_SCHEMA)
    record = dict.fromkeys(schema.IMAGES_SCHEMA.names)
    checkpoint.write([{**record, "uid": "old", "status": "success", "_row": 0}])
    assert checkpoint.done_rows(["old", "x"]) == {0}
    assert checkpoint.done_rows(["new", "x"]) == set()  # uid 0 changed: start over
    assert not checkpoint.active
