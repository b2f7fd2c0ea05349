"""Download benchmark on a web-like server: clip-index vs img2dataset when the network, not the
CPU, sets the pace. Loopback only.

    python -m bench.download.web [--urls 10000] [--hosts 200] [--i2d-threads 64,128,256]

The server (this module with ``--serve``, one aiohttp process) listens on `--hosts` loopback
addresses (127.0.1.1, 127.0.1.2, ...: a host each, so per-host limits and connection pools
work as on the web) and serves the download benchmark's corpus images (URL i → image
i mod corpus size, so 10,000 URLs need not mean 10,000 generated images). How it behaves:

- hosts: URLs are spread over hosts Zipf-like (s = 1.1: a few CDN-sized hosts, a long tail);
- latency: each host has a median time to first byte drawn log-normally around 100 ms, 5% of
  hosts are slow (median 1 s); each request varies around its host's median (sigma 0.5);
- 3% of URLs answer 404; 1% answer 503 to their first request and 200 after;
- 1% of URLs hang on their first request (half: no answer at all; half: headers and 1 KiB, then
  silence) and answer normally after, as a transient stall on the web does;
- 1% of URLs drip: a live body sent in 2 KiB pieces over ~12 s (at least 8 KB/s), every time.

Every tool runs with its defaults but for the output (224 px keep_ratio, JPEG q95, parquet):
img2dataset with 2 processes × each of `--i2d-threads` threads, 1,000 URLs per shard, its
default 10 s timeout and no retries; clip-index on the same URLs as a work unit of 1,000-row
shards (`clip-index download --urls DIR --shards 0-9`). `--repeats N` runs N rounds of every
configuration, interleaved, and reports each one's median run: on a shared host whose speed
drifts over minutes, a tool measured only after the others would meet a different machine.
Results: a Markdown table on stdout (and `--out`), raw numbers in
``WORK_DIR/web-results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.download import peers
from bench.download.measure import die_with_parent, run_measured
from bench.download.run import DEFAULT_VENV, DEFAULT_WORK, REPO, machine_info, wait_for_idle
from bench.download.server import free_port

logger = logging.getLogger("bench.download.web")

NOT_FOUND, FLAKY_503, HANG_ONCE, DRIP = 0.03, 0.01, 0.01, 0.01
DRIP_S, DRIP_MIN_BYTES_PER_S = 12.0, 8_000
SLOW_HOSTS = 0.05


def host_address(host: int) -> str:
    """The loopback address of host number `host` (0-based): 127.1.0.1 … (never 127.0.0.1)."""
    return f"127.1.{host // 250}.{host % 250 + 1}"


def _unit(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) from the seed and `parts`."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def fate(seed: int, url_index: int) -> str:
    """ok, 404, 503-once, hang-once or drip: what the server does for this URL."""
    u = _unit(seed, "fate", url_index)
    for name, share in (("404", NOT_FOUND), ("503-once", FLAKY_503), ("hang-once", HANG_ONCE),
                        ("drip", DRIP)):
        if u < share:
            return name
        u -= share
    return "ok"


def host_of(seed: int, url_index: int, hosts: int) -> int:
    """The host of URL `url_index`: Zipf-like (s = 1.1) over `hosts` hosts."""
    weights = [1 / (k + 1) ** 1.1 for k in range(hosts)]
    total = sum(weights)
    u = _unit(seed, "host", url_index) * total
    for k, w in enumerate(weights):
        u -= w
        if u < 0:
            return k
    return hosts - 1


def host_median_s(seed: int, host: int) -> float:
    """The host's median time to first byte, seconds."""
    if _unit(seed, "slow", host) < SLOW_HOSTS:
        return 1.0
    return 0.1 * math.exp(0.5 * _gauss(seed, "median", host))


def _gauss(seed: int, *parts: object) -> float:
    u1 = max(_unit(seed, *parts, 1), 1e-12)
    u2 = _unit(seed, *parts, 2)
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


# ---------------------------------------------------------------- the server (its own process)


def serve(corpus_files: list[str], hosts: int, port: int, seed: int) -> None:
    """Serve until SIGTERM (runs in the server process)."""
    from aiohttp import web  # noqa: PLC0415 - only the server process needs it

    hits: dict[int, int] = {}
    address_host = {host_address(h): h for h in range(hosts)}
    rng = random.Random(seed)

    async def handle(request: web.Request) -> web.StreamResponse:
        index = int(request.match_info["index"])
        count = hits[index] = hits.get(index, 0) + 1
        local = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        median = host_median_s(seed, address_host.get(local, 0))
        await asyncio.sleep(median * math.exp(0.5 * rng.gauss(0, 1)))
        kind = fate(seed, index)
        path = Path(corpus_files[index % len(corpus_files)])
        if kind == "404":
            raise web.HTTPNotFound()
        if kind == "503-once" and count == 1:
            raise web.HTTPServiceUnavailable()
        if kind == "hang-once" and count == 1:
            if index % 2:
                await asyncio.sleep(3600)  # no answer at all (until the client gives up)
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = path.stat().st_size
            await response.prepare(request)
            await response.write(path.read_bytes()[:1024])
            await asyncio.sleep(3600)  # a dead body
        if kind == "drip":
            body = path.read_bytes()
            response = web.StreamResponse()
            response.content_length = len(body)
            await response.prepare(request)
            step = 2048
            pause_s = min(DRIP_S / max(1, len(body) // step), step / DRIP_MIN_BYTES_PER_S)
            for start in range(0, len(body), step):
                await response.write(body[start:start + step])
                await asyncio.sleep(pause_s)
            await response.write_eof()
            return response
        return web.FileResponse(path)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/i/{index:\\d+}/{name}", handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        for h in range(hosts):
            await web.TCPSite(runner, host_address(h), port, backlog=1024).start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class WebServer:
    """The server process, started and stopped by the harness (also on errors)."""

    def __init__(self, corpus_files: list[str], hosts: int, seed: int, work: Path) -> None:
        self.port = free_port()
        listing = work / "web-files.json"
        listing.write_text(json.dumps(corpus_files))
        self.cmd = [sys.executable, "-m", "bench.download.web", "--serve", str(listing),
                    "--hosts", str(hosts), "--port", str(self.port), "--seed", str(seed)]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> WebServer:
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.__exit__()
            raise RuntimeError(f"web server did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []


# ---------------------------------------------------------------- the harness


def corpus_files(corpus_dir: Path) -> list[str]:
    """The corpus's images in index order (a complete corpus's table, else the files there)."""
    table = corpus_dir / "files.parquet"
    if table.exists():
        return [str(corpus_dir / p) for p in pq.read_table(table).column("relpath").to_pylist()]
    return sorted(str(p) for p in (corpus_dir / "img").rglob("*") if p.is_file()
                  and not p.name.endswith(".tmp"))


def write_urls(work: Path, urls: int, hosts: int, port: int, seed: int, files: list[str],
               shard_rows: int) -> tuple[Path, Path]:
    """(one parquet of every URL for img2dataset, a folder of shards for clip-index)."""
    rows = {"uid": [], "url": [], "caption": []}
    for i in range(urls):
        name = Path(files[i % len(files)]).name
        rows["uid"].append(f"{i:08d}")
        rows["url"].append(f"http://{host_address(host_of(seed, i, hosts))}:{port}/i/{i}/{name}")
        rows["caption"].append(f"image {i}")
    table = pa.table(rows)
    single = work / "web-urls.parquet"
    pq.write_table(table, single)
    shards = work / "web-urls"
    shards.mkdir(exist_ok=True)
    for old in shards.glob("*.parquet"):
        old.unlink()
    for k, start in enumerate(range(0, urls, shard_rows)):
        pq.write_table(table.slice(start, shard_rows), shards / f"part-{k:05d}.parquet")
    return single, shards


def run_clip_index(shards: Path, out: Path, count: int, timeout_s: float,
                   server: WebServer, extra: list[str]) -> peers.ToolRun:
    import shutil  # noqa: PLC0415

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "clip_index.cli", "download", "--urls", str(shards),
           "--shards", f"0-{count - 1}", "--output-dir", str(out), "--image-size", "224",
           "--resize-mode", "keep_ratio", "--allow-private-networks", *extra]
    m = run_measured(cmd, timeout_s=timeout_s, log_path=out.parent / f"{out.name}.log",
                     env=peers._clean_env(), cwd=REPO, others={"server": server.pids})
    total, ok = peers.count_clip_index_output(out) if out.exists() else (0, 0)
    label = "clip-index (defaults" + (f", {' '.join(extra)})" if extra else ")")
    return peers.ToolRun("clip-index", label, True, total, ok, m, str(out), cmd, {},
                         peers._failure_note(m))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--urls", type=int, default=10_000)
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-rows", type=int, default=1000)
    p.add_argument("--corpus", type=Path, default=DEFAULT_WORK / "corpus-2000-seed0",
                   help="the download benchmark's corpus folder (python -m bench.download.run "
                        "--images N makes one)")
    p.add_argument("--i2d-threads", default="64,128,256")
    p.add_argument("--i2d-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--tools", default="img2dataset,clip-index")
    p.add_argument("--clip-index-extra", default="", help="extra flags for a second clip-index "
                   "run (e.g. '--concurrency 128 --first-timeout-s 0')")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every configuration, interleaved (each round runs each once, "
                        "so a host that speeds up or slows down meets every tool alike); the "
                        "median run of each is reported")
    p.add_argument("--run-timeout", type=float, default=900)
    p.add_argument("--wait-idle", type=float, default=0)
    p.add_argument("--idle-cores", type=float, default=0.3)
    p.add_argument("--out", type=Path)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: expected an integer >= 1")
    if args.serve:
        serve(json.loads(args.serve.read_text()), args.hosts, args.port, args.seed)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = corpus_files(args.corpus)
    if not files:
        raise SystemExit(f"no corpus images in {args.corpus}: run python -m bench.download.run "
                         "--images 2000 --tools img2dataset --no-ceiling once to make them")
    tools = set(args.tools.split(","))
    count = math.ceil(args.urls / args.shard_rows)
    plan: list[tuple[str, Any]] = []
    if "img2dataset" in tools:
        exe = peers.ensure_img2dataset(args.i2d_venv)
        plan += [("img2dataset", int(t)) for t in args.i2d_threads.split(",")]
    if "clip-index" in tools:
        plan.append(("clip-index", []))
        if args.clip_index_extra:
            plan.append(("clip-index", shlex.split(args.clip_index_extra)))
    tries: list[list[peers.ToolRun]] = [[] for _ in plan]
    for round_ in range(args.repeats):
        for k, (tool, option) in enumerate(plan):
            # a fresh server per run: "once" failures (503, hangs) are per server, and each
            # tool must meet them
            with WebServer(files, args.hosts, args.seed, work) as server:
                single, shards = write_urls(work, args.urls, args.hosts, server.port,
                                            args.seed, files, args.shard_rows)
                if args.wait_idle:
                    wait_for_idle(args.wait_idle, args.idle_cores)
                if tool == "img2dataset":
                    run = peers.run_img2dataset(
                        exe, single, work / f"web-out-i2d-{option}", image_size=224,
                        resize_mode="keep_ratio", threads=option, processes=2,
                        shard_size=args.shard_rows, timeout_s=args.run_timeout,
                        nginx_pids=server.pids)
                else:
                    run = run_clip_index(shards, work / f"web-out-ci{k}", count,
                                         args.run_timeout, server, option)
            tries[k].append(run)
            logger.info("round %d/%d, %s: %.1f img/s", round_ + 1, args.repeats, run.label,
                        run.images_per_s)
    runs = [peers.median_run(t) for t in tries]
    results = {"machine": machine_info(), "command": "python -m bench.download.web "
               + shlex.join(sys.argv[1:] if argv is None else argv),
               "corpus_images": len(files), "runs": [r.as_dict() for r in runs]}
    (work / "web-results.json").write_text(json.dumps(results, indent=2))
    text = report(runs, args, len(files))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def report(runs: list[peers.ToolRun], args: argparse.Namespace, corpus: int) -> str:
    lines = [f"{args.urls:,} URLs over {args.hosts} loopback hosts ({corpus:,} distinct corpus "
             f"images), {os.cpu_count()} cores", "",
             "| tool | wall s | images | images/s | CPU ms/img (main process + the rest) | "
             "peak RSS MB | server CPU s | other load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        m = r.measurement
        if m is None:
            continue
        main_ms = 1000 * m.main_cpu_s_sampled / max(1, r.successes)
        rest_ms = 1000 * (m.cpu_s_sampled - m.main_cpu_s_sampled) / max(1, r.successes)
        each = r.params.get("runs_images_per_s", [])
        rate = f"{r.images_per_s:.1f}" + (f" ({'/'.join(map(str, each))})" if len(each) > 1
                                          else "")
        lines.append(f"| {r.label} | {m.wall_s:.1f} | {r.successes:,} | {rate} | "
                     f"{r.cpu_ms_per_image:.2f} ({main_ms:.2f} + {rest_ms:.2f}) | "
                     f"{m.peak_rss_mb:.0f} | "
                     f"{m.other_cpu_s.get('server', m.other_cpu_s.get('nginx', 0)):.1f} | "
                     f"{m.background_cores:.2f} |"
                     + (f" {r.note}" if r.note else ""))
    i2d = [r for r in runs if r.tool == "img2dataset" and r.measurement]
    ci = [r for r in runs if r.tool == "clip-index" and r.measurement]
    if i2d and ci:
        best = max(i2d, key=lambda r: r.images_per_s)
        lines += ["", f"clip-index (defaults) / best img2dataset ({best.label}): "
                  f"{ci[0].images_per_s / best.images_per_s:.2f}x images/s, "
                  f"{ci[0].successes - best.successes:+,} images"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
