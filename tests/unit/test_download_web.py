"""The download step on a latency-bound web: retries that wait without holding a slot, a short
first deadline, slow-but-live bodies told apart from dead ones, and consecutive shards whose
tails overlap. Real requests to a local server; every row still ends with exactly one status."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web

from clip_index import io, schema
from clip_index.config import DownloadConfig
from clip_index.download.step import download_shard, run_download
from tests.support import images, routes
from tests.support.http_server import TestServer

JPEG = images.noisy_jpeg(200, 150)


def _config(**overrides: Any) -> DownloadConfig:
    return DownloadConfig(**{"allow_private_networks": True, "image_size": 32,
                             "decode_workers": 1, **overrides})


def _shard(path: Path, urls: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(
        [{"uid": uid, "url": url, "caption": uid} for uid, url in urls],
        schema=schema.URLS_SCHEMA), path)
    return path


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    rows = pq.read_table(path).to_pylist()
    by_uid = {r["uid"]: r for r in rows}
    assert len(by_uid) == len(rows), "every row exactly once"
    return by_uid


def _timed(server: TestServer, times: dict[str, float], path: str, handler: Any) -> str:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        times.setdefault(path, time.monotonic())
        return await handler(request)
    return server.add(path, wrapped)


def test_a_retry_waits_without_holding_its_host(tmp_path: Path, http_server: TestServer) -> None:
    # one host, one slot: the 503's backoff (Retry-After 2 s) must not block its host's other rows
    times: dict[str, float] = {}
    retried_at = {"t": float("inf")}
    first_503 = routes.fail_then([503], JPEG, {"Retry-After": "2"})

    async def flaky_handler(request: web.Request) -> web.StreamResponse:
        if http_server.hits["/flaky"] == 2:
            retried_at["t"] = time.monotonic()
        return await first_503(request)

    flaky = http_server.add("/flaky", flaky_handler)
    fast = [_timed(http_server, times, f"/fast{i}", routes.slow_image(JPEG, 0.05))
            for i in range(6)]
    src = _shard(tmp_path / "urls.parquet", [("flaky", flaky)] + [(f"f{i}", u)
                                                                  for i, u in enumerate(fast)])
    start = time.monotonic()
    stats = download_shard(str(src), str(tmp_path / "out.parquet"),
                           _config(per_host_concurrency=1, download_retries=1))
    assert stats.successes == 7 and http_server.hits["/flaky"] == 2
    # every fast row was served during the flaky row's backoff, before its retry
    assert max(times[f"/fast{i}"] for i in range(6)) < retried_at["t"], times
    assert time.monotonic() - start < 8


def test_short_first_deadline_then_the_full_one(tmp_path: Path, http_server: TestServer) -> None:
    calls = {"n": 0}
    stall = routes.headers_then_stall(60)
    body = routes.slow_image(JPEG, 1.0)  # a second attempt that needs more than the first deadline

    async def hang_once(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        return await (stall if calls["n"] == 1 else body)(request)

    url = http_server.add("/hang-once", hang_once)
    src = _shard(tmp_path / "urls.parquet", [("a", url)])
    start = time.monotonic()
    stats = download_shard(str(src), str(tmp_path / "out.parquet"),
                           _config(first_timeout_s=0.5, timeout_s=5.0, download_retries=1))
    assert stats.successes == 1 and calls["n"] == 2
    assert time.monotonic() - start < 4.5  # 0.5 s dead first try, not 5 s


def test_a_live_slow_body_is_kept_and_a_dead_one_is_not(tmp_path: Path,
                                                         http_server: TestServer) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        # the whole body over ~2.5 s at >= 8 KB/s: past the 1 s deadline, yet alive
        resp = web.StreamResponse(headers={"Content-Length": str(len(JPEG))})
        await resp.prepare(request)
        step = max(1, len(JPEG) // 10)
        for start in range(0, len(JPEG), step):
            await resp.write(JPEG[start:start + step])
            await asyncio.sleep(0.25)
        return resp

    live = http_server.add("/drip", drip)
    dead = http_server.add("/dead", routes.headers_then_stall(60))
    crawl = http_server.add("/crawl", routes.trickle(0.2))  # 5 bytes/s: not alive enough
    src = _shard(tmp_path / "urls.parquet", [("live", live), ("dead", dead), ("crawl", crawl)])
    start = time.monotonic()
    download_shard(str(src), str(tmp_path / "out.parquet"),
                   _config(first_timeout_s=1.0, timeout_s=1.0, download_retries=0,
                           drip_bytes_per_s=2048, max_drip_s=30))
    rows = _rows(tmp_path / "out.parquet")
    assert len(JPEG) / 2.5 > 2048  # the drip really is above the configured rate
    assert rows["live"]["status"] == "success" and http_server.hits["/drip"] == 1
    for uid in ("dead", "crawl"):
        assert rows[uid]["status"] == "failed_to_download"
        assert rows[uid]["error"].startswith("timeout"), rows[uid]
    assert time.monotonic() - start < 8


def test_consecutive_shards_overlap_their_tails(tmp_path: Path, http_server: TestServer) -> None:
    # shard 0 ends with a 3 s row; shards 1 and 2 are fast and must not wait for it
    slow = http_server.add("/slow", routes.slow_image(JPEG, 3.0))
    fast = [http_server.add(f"/f{i}", routes.slow_image(JPEG, 0.02)) for i in range(12)]
    urls_dir, out = tmp_path / "urls", tmp_path / "images"
    _shard(urls_dir / io.shard_name(0), [("s0-slow", slow)] + [(f"s0-{i}", fast[i])
                                                               for i in range(4)])
    for shard in (1, 2):
        _shard(urls_dir / io.shard_name(shard),
               [(f"s{shard}-{i}", fast[4 * shard + i - 4]) for i in range(4)])
    start = time.monotonic()
    result = run_download(str(urls_dir), [0, 1, 2], str(out), _config())
    elapsed = time.monotonic() - start
    assert [s.shard for s in result.shards] == [0, 1, 2]  # the unit's order, not finish order
    assert sum(s.successes for s in result.shards) == 13
    done_at = {k: (out / io.stats_name(k)).stat().st_mtime_ns for k in (0, 1, 2)}
    assert done_at[1] < done_at[0] and done_at[2] < done_at[0], "later shards waited for shard 0"
    assert elapsed < 3.0 + 4, elapsed
    # and a re-run skips all three (their stats files are the done markers)
    again = run_download(str(urls_dir), [0, 1, 2], str(out), _config())
    assert all(s.skipped for s in again.shards)
    assert {r["uid"] for k in (0, 1, 2) for r in pq.read_table(out / io.shard_name(k),
                                                                columns=["uid"]).to_pylist()} \
        == {f"s0-{i}" for i in range(4)} | {"s0-slow"} | {f"s{k}-{i}" for k in (1, 2)
                                                          for i in range(4)}


def test_tails_of_many_shards_do_not_keep_the_next_shards_from_opening(
        tmp_path: Path, http_server: TestServer) -> None:
    # twelve shards, each ending with a row that hangs for its whole 3 s deadline: every shard
    # must open while the earlier ones wait on their hung row (with 8 open shards at most, the
    # 9th shard's hung request came only when shard 0's deadline ended, 3 s after the first)
    times: dict[str, float] = {}
    urls_dir, out = tmp_path / "urls", tmp_path / "images"
    shards = range(12)
    for k in shards:
        hung = _timed(http_server, times, f"/hung{k}", routes.headers_then_stall(60))
        fast = [http_server.add(f"/f{k}-{i}", routes.slow_image(JPEG, 0.02)) for i in range(3)]
        _shard(urls_dir / io.shard_name(k), [(f"s{k}-{i}", u) for i, u in enumerate(fast)]
               + [(f"s{k}-hung", hung)])
    result = run_download(str(urls_dir), list(shards), str(out),
                          _config(first_timeout_s=3.0, timeout_s=3.0, download_retries=0,
                                  per_host_concurrency=64))
    arrived = sorted(times[f"/hung{k}"] for k in shards)
    assert arrived[-1] - arrived[0] < 2.0, f"later shards waited for tails: {arrived}"
    for k, stats in zip(shards, result.shards, strict=True):
        rows = _rows(out / io.shard_name(k))
        assert set(rows) == {f"s{k}-{i}" for i in range(3)} | {f"s{k}-hung"}
        assert rows[f"s{k}-hung"]["error"].startswith("timeout"), rows[f"s{k}-hung"]
        assert stats.successes == 3 and stats.rows == 4


def test_a_tail_writes_its_records_out_past_the_byte_bound(tmp_path: Path,
                                                           http_server: TestServer) -> None:
    # a shard whose fast rows are done and whose last row hangs holds no finished records in
    # memory past max_buffered_bytes: they reach its checkpoint chunks while the row hangs
    # (checkpoint_rows alone would keep them until the shard ends)
    fast = [http_server.add(f"/f{i}", routes.slow_image(JPEG, 0.02)) for i in range(6)]
    slow = http_server.add("/slow", routes.slow_image(JPEG, 4.0))
    urls_dir, out = tmp_path / "urls", tmp_path / "images"
    _shard(urls_dir / io.shard_name(0), [(f"f{i}", u) for i, u in enumerate(fast)]
           + [("slow", slow)])
    config = _config(checkpoint_rows=1000, max_buffered_bytes=1)  # every record written at once
    partial = out / f".{io.shard_name(0)}.partial"
    seen: set[str] = set()

    def run() -> None:
        run_download(str(urls_dir), [0], str(out), config)

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive() and len(seen) < 6:
        for chunk in sorted(partial.glob("rows-*.arrow")) if partial.is_dir() else []:
            with contextlib.suppress(OSError, pa.ArrowInvalid):
                seen |= set(io.read_arrow(str(chunk), columns=["uid"]).column("uid")
                            .to_pylist())
        time.sleep(0.05)
    still_running = thread.is_alive()
    thread.join()
    assert seen == {f"f{i}" for i in range(6)} and still_running, (seen, still_running)
    rows = _rows(out / io.shard_name(0))
    assert set(rows) == seen | {"slow"} and all(r["status"] == "success" for r in rows.values())
    assert not partial.exists()


def test_per_host_limit_does_not_idle_other_hosts(tmp_path: Path,
                                                  http_server: TestServer) -> None:
    # 40 rows of one slow host (1 slot, 0.3 s each = 12 s) ahead of 20 rows of another host:
    # the other host's rows are done long before the busy host's queue drains
    times: dict[str, float] = {}
    busy = [_timed(http_server, times, f"/busy{i}", routes.slow_image(JPEG, 0.3))
            for i in range(40)]
    other = [_timed(http_server, times, f"/other{i}", routes.slow_image(JPEG, 0.05))
             .replace("127.0.0.1", "localhost") for i in range(20)]
    src = _shard(tmp_path / "urls.parquet", [(f"b{i}", u) for i, u in enumerate(busy)]
                 + [(f"o{i}", u) for i, u in enumerate(other)])
    start = time.monotonic()
    stats = download_shard(str(src), str(tmp_path / "out.parquet"),
                           _config(per_host_concurrency=1, concurrency=4))
    assert stats.successes == 60
    assert max(times[f"/other{i}"] for i in range(20)) - start < 4, "other host idled"
