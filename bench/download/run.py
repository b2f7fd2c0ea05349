"""Download benchmark: clip-index vs img2dataset, same corpus, same local nginx, one run.

    python -m bench.download.run [--images 10000] [--image-size 224]
        [--resize-mode keep_ratio] [--out BENCHMARKS-fragment.md]

Steps: generate (or reuse) a DataComp-like corpus; start nginx on 127.0.0.1 (installed from
Debian if missing); measure the serving ceiling with a plain aiohttp client; run img2dataset (own
venv, created if missing) and clip-index's downloader as measured subprocesses (wall time,
images/s, CPU ms per image and peak RSS of the whole process tree; with `--repeats N`, N rounds
that run every configuration once each, the median run of each kept); compare their resize quality;
print a Markdown report (and write it to ``--out``). Raw results go to
``WORK_DIR/results.json``. nginx and every child are stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pyarrow.parquet as pq

from bench.download import corpus as corpus_mod
from bench.download import peers, quality
from bench.download.ceiling import measure_ceiling
from bench.download.measure import cpu_of, machine_busy_s
from bench.download.server import NginxServer, ServerError, ensure_nginx, nginx_version

logger = logging.getLogger("bench.download")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORK = REPO / "bench" / ".work" / "download"
DEFAULT_VENV = REPO / "bench" / ".venvs" / "img2dataset"
TOOLS = ("img2dataset", "clip-index")
DEFAULT_I2D_THREADS = "64"  # best of 32/64/128 on the 2-core dev machine (see the report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.download.run",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=10_000, help="corpus size")
    p.add_argument("--image-size", type=int, default=224, help="target size (px)")
    p.add_argument("--resize-mode", default="keep_ratio", choices=sorted(peers.RESIZE_MODES),
                   help="clip-index's resize mode (mapped to img2dataset's)")
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                   help="corpus, nginx prefix, outputs, logs")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma list of tools to run")
    p.add_argument("--i2d-threads", default=DEFAULT_I2D_THREADS,
                   help="img2dataset thread counts to try (comma list, e.g. 32,64,128)")
    p.add_argument("--i2d-processes", type=int, default=2, help="img2dataset processes")
    p.add_argument("--i2d-shard-size", type=int, default=1000,
                   help="img2dataset --number_sample_per_shard")
    p.add_argument("--i2d-venv", type=Path, default=DEFAULT_VENV, help="img2dataset's own venv")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every configuration, interleaved (median run kept)")
    p.add_argument("--ceiling-concurrency", type=int, default=128)
    p.add_argument("--no-ceiling", action="store_true", help="skip the server ceiling")
    p.add_argument("--quality-sample", type=int, default=200, help="images for the PSNR check")
    p.add_argument("--run-timeout", type=float, default=900, help="seconds per tool run")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each measured run, wait up to this long for other processes to "
                        "use less than --idle-cores of CPU (a shared machine)")
    p.add_argument("--idle-cores", type=float, default=0.3)
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get nginx or pip-install img2dataset; fail instead")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tools {sorted(unknown)}: choose from {TOOLS}")
    args.i2d_threads = [int(t) for t in str(args.i2d_threads).split(",") if t.strip()]
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be >= 1")
    return args


# ---------------------------------------------------------------- machine and versions


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model and load average."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_gib, 1),
            "kernel": platform.release(), "loadavg": os.getloadavg()}


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------- running


def wait_for_idle(max_wait_s: float, threshold_cores: float, window_s: float = 3) -> float:
    """Wait (up to ``max_wait_s``) until the machine's busy CPU over ``window_s`` drops below
    ``threshold_cores``; returns the last busy reading in cores (nginx idles at ~0)."""
    deadline = time.monotonic() + max_wait_s
    next_log = 0.0
    while True:
        before = machine_busy_s()
        time.sleep(window_s)
        busy = (machine_busy_s() - before) / window_s
        if busy < threshold_cores or time.monotonic() >= deadline:
            if busy >= threshold_cores:
                logger.warning("machine still busy (%.2f cores used by others): measuring anyway",
                               busy)
            return busy
        if time.monotonic() >= next_log:
            logger.info("machine busy (%.2f cores used by others): waiting up to %.0f s more",
                        busy, deadline - time.monotonic())
            next_log = time.monotonic() + 30


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Everything but the report: returns the raw results."""
    started = time.monotonic()
    work: Path = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    results["command"] = "python -m bench.download.run " + shlex.join(sys.argv[1:])

    params = corpus_mod.CorpusParams(images=args.images, seed=args.seed)
    corpus = corpus_mod.ensure(work / f"corpus-{args.images}-seed{args.seed}", params)
    results["corpus"] = corpus.summary()

    nginx = ensure_nginx(install=not args.no_install)
    versions = {"python": platform.python_version(), "aiohttp": _dist_version("aiohttp"),
                "pillow": _dist_version("pillow"), "numpy": _dist_version("numpy"),
                "pyarrow": _dist_version("pyarrow"), "psutil": _dist_version("psutil"),
                "nginx": nginx_version(nginx)}
    i2d_exe = None
    if "img2dataset" in args.tools:
        if args.no_install and not (args.i2d_venv / "bin" / "img2dataset").exists():
            raise RuntimeError(f"img2dataset venv missing at {args.i2d_venv} (--no-install)")
        i2d_exe = peers.ensure_img2dataset(args.i2d_venv)
        versions["img2dataset"] = peers.img2dataset_version(args.i2d_venv)
    ci_available, ci_version = False, "not run"
    python = peers.project_python()
    if "clip-index" in args.tools:
        ci_available, ci_version = peers.clip_index_available(python, REPO)
        versions["clip-index"] = ci_version
        if not ci_available:
            logger.warning("clip-index: %s", ci_version)
    results["versions"] = versions

    runs: list[peers.ToolRun] = []
    outputs = work / "out"
    with NginxServer(corpus.root, work / "nginx", binary=nginx, workers=1) as server:
        urls = corpus_mod.write_url_list(corpus, server.base_url, work / "urls.parquet")
        url_list = pq.read_table(urls, columns=["url"]).column("url").to_pylist()
        assert all(u.startswith("http://127.0.0.1:") for u in url_list), "loopback only"
        results["server"] = {"url": server.base_url, "workers": 1, "keepalive": True}
        if not args.no_ceiling:
            if args.wait_idle:
                wait_for_idle(args.wait_idle, args.idle_cores)
            nginx_pids = server.pids()
            cpu0 = cpu_of(nginx_pids)
            ceiling = measure_ceiling(url_list, concurrency=args.ceiling_concurrency)
            results["ceiling"] = {**ceiling.__dict__, "req_per_s": round(ceiling.req_per_s),
                                  "mb_per_s": round(ceiling.mb_per_s, 1),
                                  "nginx_cpu_s": round(cpu_of(nginx_pids) - cpu0, 2)}
        # every configuration once per round, rounds repeated: a host whose speed drifts
        # over minutes then meets every tool alike (run one tool's repeats after the other's
        # and the drift lands in the ratio)
        plan: list[tuple[str, int]] = []
        if i2d_exe is not None:
            plan += [("img2dataset", threads) for threads in args.i2d_threads]
        if "clip-index" in args.tools and ci_available:
            plan.append(("clip-index", 0))
        tries: list[list[peers.ToolRun]] = [[] for _ in plan]
        for k in range(args.repeats):
            for config, (tool, threads) in zip(tries, plan):
                if tool == "img2dataset":
                    logger.info("img2dataset: %d×%d threads, run %d/%d", args.i2d_processes,
                                threads, k + 1, args.repeats)
                else:
                    logger.info("clip-index: run %d/%d", k + 1, args.repeats)
                if args.wait_idle:
                    wait_for_idle(args.wait_idle, args.idle_cores)
                if tool == "img2dataset":
                    assert i2d_exe is not None
                    config.append(peers.run_img2dataset(
                        i2d_exe, urls, outputs / f"img2dataset-t{threads}",
                        image_size=args.image_size, resize_mode=args.resize_mode,
                        threads=threads, processes=args.i2d_processes,
                        shard_size=args.i2d_shard_size, timeout_s=args.run_timeout,
                        nginx_pids=server.pids))
                else:
                    config.append(peers.run_clip_index(
                        python, REPO, urls, outputs / "clip-index", image_size=args.image_size,
                        resize_mode=args.resize_mode, timeout_s=args.run_timeout,
                        nginx_pids=server.pids))
        runs += [peers.median_run(config) for config in tries]
        if "clip-index" in args.tools and not ci_available:
            runs.append(peers.unavailable("clip-index", ci_version))
    results["runs"] = [r.as_dict() for r in runs]

    # resize quality on the best img2dataset run and the clip-index run
    i2d_runs = [r for r in runs if r.tool == "img2dataset" and r.successes]
    ci_runs = [r for r in runs if r.tool == "clip-index" and r.successes]
    to_compare: dict[str, Path] = {}
    if i2d_runs:
        to_compare["img2dataset"] = Path(max(i2d_runs, key=lambda r: r.images_per_s).out_dir)
    if ci_runs:
        to_compare["clip-index"] = Path(ci_runs[0].out_dir)
    if to_compare and args.quality_sample > 0:
        files = corpus.files.to_pydict()
        url_to_relpath = {u: rel for u, rel in zip(url_list, files["relpath"], strict=True)}
        outs = {name: quality.read_outputs(path) for name, path in to_compare.items()}
        q = quality.compare(corpus.root, url_to_relpath, outs, args.resize_mode,
                            args.image_size, args.quality_sample)
        results["quality"] = [r.as_dict() for r in q]
        results["quality_markdown"] = quality.markdown(q, args.resize_mode, args.image_size)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results



# ---------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    """The Markdown report of one benchmark run."""
    m, c, v = results["machine"], results["corpus"], results["versions"]
    args = results["args"]
    lines = [
        f"### Download: clip-index vs img2dataset ({c['images']:,} images, "
        f"{args['image_size']} px {args['resize_mode']})",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, no GPU; "
        f"load average at start {m['loadavg'][0]:.2f}.",
        f"Corpus: {c['images']:,} synthetic DataComp-like images, {c['total_mb']:,} MB "
        f"(mean {c['mean_kb']} KB, median {c['median_kb']} KB, mean {c['mean_megapixels']} MP); "
        f"formats {_fmt_counts(c['formats'])}; long side {_fmt_counts(c['size_classes'])} "
        "(tiny < 50 px, small 50-299, medium 300-1,200, large 1,201-4,000). Served by nginx "
        f"{v['nginx']} on 127.0.0.1, 1 worker process, keep-alive.",
    ]
    ceiling = results.get("ceiling")
    fastest = max((r["images_per_s"] for r in results["runs"] if r["available"]), default=0)
    if ceiling:
        client_load = ceiling["client_cpu_s"] / ceiling["wall_s"] if ceiling["wall_s"] else 0
        nginx_load = ceiling["nginx_cpu_s"] / ceiling["wall_s"] if ceiling["wall_s"] else 0
        limit = ("the single-threaded Python client is the limit, not nginx"
                 if client_load > 0.85 and client_load > nginx_load else
                 "nginx's one worker is the limit" if nginx_load > 0.85 else
                 "neither side saturated one core")
        lines.append(
            f"Server ceiling (one aiohttp client, {ceiling['concurrency']} concurrent, keep-alive, "
            f"bodies read and discarded): **{ceiling['req_per_s']:,} req/s, "
            f"{ceiling['mb_per_s']:,} MB/s** ({ceiling['ok']:,}/{ceiling['requests']:,} OK; "
            f"client CPU {ceiling['client_cpu_s']:.1f} s, nginx CPU {ceiling['nginx_cpu_s']:.1f} s "
            f"in {ceiling['wall_s']:.1f} s: {limit})." + (
                " The fastest downloader below reaches "
                f"{100 * fastest / ceiling['req_per_s']:.0f}% of it."
                if fastest and ceiling["req_per_s"] else ""))
    lines += ["", "| tool | images/s | success | wall s | CPU ms/img | peak RSS MB | "
              "peak PSS MB | nginx CPU s | other load (cores) | ratio vs img2dataset |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    runs = results["runs"]
    i2d = [r for r in runs if r["tool"] == "img2dataset" and r["successes"]]
    base = max(i2d, key=lambda r: r["images_per_s"]) if i2d else None
    for r in runs:
        if not r["available"]:
            lines.append(f"| {r['label']} | {r['note']} | | | | | | | | |")
            continue
        meas = r["measurement"]
        ratio = (f"{r['images_per_s'] / base['images_per_s']:.2f}×"
                 if base and base["images_per_s"] else "n/a")
        label = r["label"] + (" **(best)**" if base is r and len(i2d) > 1 else "")
        spread = r["params"].get("runs_images_per_s", [])
        ips = f"{r['images_per_s']:.0f}" + (
            f" ({'/'.join(f'{x:.0f}' for x in spread)})" if len(spread) > 1 else "")
        note = f" ⚠ {r['note']}" if r["note"] else ""
        lines.append(
            f"| {label}{note} | {ips} | {r['successes']:,}/{r['total']:,} | {meas['wall_s']:.1f} | "
            f"{r['cpu_ms_per_image']:.2f} | {meas['peak_rss_mb']:.0f} | "
            f"{meas['peak_pss_mb']:.0f} | "
            f"{meas['other_cpu_s'].get('nginx', float('nan')):.1f} | "
            f"{meas['background_cores']:.2f} | {ratio} |")
    lines += [
        "",
        "images/s = successes / wall time of the whole command (start-up included); CPU = user + "
        "sys of the tool's whole process tree (`getrusage(RUSAGE_CHILDREN)` delta); peak RSS = "
        "largest sum of RSS over the tree, sampled every 0.1 s (pages shared between processes "
        "count once per process); peak PSS = the same with shared pages split between their "
        "processes (sampled every 1 s); nginx CPU is the server's, not included in the tool's. "
        "Both tools: "
        "JPEG q95 output to parquet, timeout 10 s (img2dataset) / tool default (clip-index), "
        "no retries for img2dataset. Other load = CPU used by unrelated processes during the "
        "run (/proc/stat minus the tool, nginx and this harness), in cores.",
    ]
    busy = [r for r in runs if r["available"] and r["measurement"]["background_cores"] > 0.2]
    if busy:
        lines.append(
            f"⚠ Other processes used up to "
            f"{max(r['measurement']['background_cores'] for r in busy):.2f} of the "
            f"{m['nproc']} cores during {', '.join(r['label'] for r in busy)}: images/s is "
            "understated there (CPU ms/img much less so). Re-run on an idle machine to compare.")
    if len(i2d) > 1:
        lines.append("img2dataset thread counts tried: " + ", ".join(
            f"{r['params']['threads']} → {r['images_per_s']:.0f} img/s" for r in i2d) + ".")
    if results.get("quality_markdown"):
        lines += ["", results["quality_markdown"]]
    lines += ["", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
              "Commands:", "", "```", results["command"]]
    for r in runs:
        if r["command"]:
            lines.append(shlex.join(_shorten(r["command"])))
    lines += ["```", "", f"Whole benchmark run: {results['elapsed_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def _shorten(cmd: list[str]) -> list[str]:
    """Paths relative to the repository root, for a readable report."""
    out = []
    for part in cmd:
        if part.startswith(str(REPO) + "/"):
            part = os.path.relpath(part, REPO)
        elif part == sys.executable:
            part = "python"
        out.append(part)
    return out


def _fmt_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {100 * n / total:.0f}%" for k, n in
                     sorted(counts.items(), key=lambda kv: -kv[1]))


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the benchmark, print (and write) the report."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _exit_on_signal)  # → SystemExit → finally blocks stop nginx
    signal.signal(signal.SIGHUP, _exit_on_signal)
    try:
        results = run_benchmark(args)
    except ServerError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: nginx and the tools were stopped")
        return 130
    text = report(results)
    print(text)
    if args.out:
        args.out.write_text(text)
        logger.info("report written to %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
