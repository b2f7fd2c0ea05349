"""A local rehearsal of the reference job's shape: many rows in many shards through kfp.local,
killed once part-way and run again.

    python -m bench.scale.rehearsal [--rows 50000] [--shard-size 250] [--kill-after-s 240]

Serves `--images` small JPEGs from nginx on 127.0.0.1 (every row has its own URL, images
repeat), writes a `--rows` dataset, then runs `clip-index run` (tiny-clip, bundled weights, the
Vertex template's default loop widths: 8 groups of 4 download tasks) as a measured subprocess:
first killed after `--kill-after-s`, then again to the end with the same pipeline root, so the
finished work units come from the cache. It checks that every row is in data/ or failed/ exactly
once, counts the tasks of each loop, and prints a Markdown table (wall time, peak memory of the
process tree, loop widths); the same figures go to WORK/result.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from bench.download.measure import Measurement, run_measured
from bench.download.server import NginxServer, ensure_nginx
from clip_index import io

logger = logging.getLogger("bench.scale.rehearsal")
REPO = Path(__file__).resolve().parents[2]


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` small JPEGs of coloured shapes (what tiny-clip knows), 96-256 px."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        w, h = rng.randint(96, 256), rng.randint(96, 256)
        img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colour)
        name = f"img-{i:05d}.jpg"
        img.save(folder / name, quality=90)
        names.append(name)
    return names


def write_dataset(path: Path, base_url: str, names: list[str], rows: int) -> None:
    """`rows` distinct URLs over the images (``?r=N``); every 40th points at a missing file."""
    uids = [f"row-{n}" for n in range(rows)]
    urls = [f"{base_url}/missing-{n}.jpg" if n % 40 == 39 else
            f"{base_url}/{names[n % len(names)]}?r={n}" for n in range(rows)]
    pq.write_table(pa.table({"uid": uids, "url": urls,
                             "text": [f"caption {n}" for n in range(rows)]}), path)


def count_tasks(root: Path) -> dict[str, int]:
    """Tasks per component that finished under the pipeline root (all runs, cache hits once)."""
    return dict(Counter(p.parent.name for p in root.rglob("executor_output.json")))


def check_every_row_once(output_dir: Path, rows: int) -> dict[str, int]:
    """uid counts over data/ and failed/: each of the `rows` uids exactly once, or raise."""
    seen: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for sub in ("data", "failed"):
        for part in io.list_shards(str(output_dir / sub)):
            table = io.read_parquet(part, ["uid"] + (["status"] if sub == "failed" else []))
            seen.update(table.column("uid").to_pylist())
            if sub == "failed":
                statuses.update(table.column("status").to_pylist())
            else:
                statuses["success"] += table.num_rows
    wrong = {u: n for u, n in seen.items() if n != 1}
    if len(seen) != rows or wrong:
        raise SystemExit(f"rows lost or doubled: {len(seen)} distinct of {rows}, "
                         f"{len(wrong)} seen more than once")
    return dict(statuses)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale.rehearsal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="dataset rows (default: 50000)")
    p.add_argument("--shard-size", type=int, default=250, help="rows per shard (default: 250)")
    p.add_argument("--images", type=int, default=500, help="distinct images (default: 500)")
    p.add_argument("--kill-after-s", type=float, default=240.0,
                   help="kill the first run after this many seconds (default: 240)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="limit of the second run")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench" / ".work" / "scale")
    p.add_argument("--download-parallelism", type=int, default=32,
                   help="download tasks, as compiled for Vertex AI (default: 32)")
    p.add_argument("--embed-parallelism", type=int, default=8,
                   help="embed groups, as compiled for Vertex AI (default: 8)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    names = make_images(work / "www", args.images)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with NginxServer(work / "www", work / "nginx", binary=ensure_nginx()) as server:
        write_dataset(work / "urls.parquet", server.base_url, names, args.rows)
        out, root = work / "out", work / "root"
        cmd = [sys.executable, "-m", "clip_index.cli", "run", "--dataset",
               str(work / "urls.parquet"), "--output-dir", str(out), "--pipeline-root", str(root),
               "--model", "tiny-clip", "--pretrained", "bundled", "--shard-size",
               str(args.shard_size), "--image-size", "64", "--allow-private-networks",
               "--timeout-s", "10", "--download-retries", "0",
               # the reference's widths, not a local run's narrower default
               "--download-parallelism", str(args.download_parallelism),
               "--embed-parallelism", str(args.embed_parallelism)]
        first = run_measured(cmd, timeout_s=args.kill_after_s, log_path=work / "run1.log",
                             env=env, cwd=REPO)
        at_kill = count_tasks(root)
        second = run_measured(cmd, timeout_s=args.timeout_s, log_path=work / "run2.log",
                              env=env, cwd=REPO)
    if not second.ok:
        raise SystemExit(f"the second run failed: see {work / 'run2.log'}")
    statuses = check_every_row_once(out, args.rows)
    result = report(args, first, at_kill, second, count_tasks(root), statuses)
    (work / "result.json").write_text(json.dumps(result, indent=2))
    return 0


def report(args: argparse.Namespace, first: Measurement, at_kill: dict[str, int],
           second: Measurement, tasks: dict[str, int], statuses: dict[str, int]) -> dict:
    shards = -(-args.rows // args.shard_size)
    result = {
        "rows": args.rows, "shards": shards, "statuses": statuses,
        "first_run": {"killed_after_s": round(first.wall_s, 1), "timed_out": first.timed_out,
                      "tasks_done_at_kill": at_kill, "peak_rss_mb": round(first.peak_rss_mb)},
        "second_run": {"wall_s": round(second.wall_s, 1), "peak_rss_mb": round(second.peak_rss_mb),
                       "peak_processes": second.peak_processes},
        "tasks_per_component": tasks,
    }
    print(f"| rows | shards | download tasks | embed tasks | first run (killed) | download "
          f"units done at kill | second run | peak RSS (tree) | every row once |\n"
          f"|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
          f"| {args.rows:,} | {shards} | {tasks.get('download-images', 0)} | "
          f"{tasks.get('embed-images', 0)} | {first.wall_s:.0f} s | "
          f"{at_kill.get('download-images', 0)} | {second.wall_s:.0f} s | "
          f"{max(first.peak_rss_mb, second.peak_rss_mb):,.0f} MB | yes ({statuses}) |")
    return result


if __name__ == "__main__":
    sys.exit(main())
