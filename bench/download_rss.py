"""Peak memory of the download step against shard size: is it bounded whatever the shard size?

    python -m bench.download_rss [--rows 5000,50000] [--images 10000]

Serves the download benchmark's corpus (``bench/download``: generated if missing) from nginx on
127.0.0.1, writes URL shards of each requested size (the corpus repeated, each repeat with its
own query string so every URL and uid is distinct), runs ``clip-index download`` on each as a
measured subprocess (peak RSS and PSS of the whole process tree, sampled) and prints a Markdown
table. Bounded memory shows as the same peak for 5,000 and 50,000 rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.download import corpus as corpus_mod
from bench.download.measure import run_measured
from bench.download.peers import _clean_env, count_clip_index_output
from bench.download.server import NginxServer, ensure_nginx

logger = logging.getLogger("bench.download_rss")
REPO = Path(__file__).resolve().parents[1]


def write_shard(corpus: corpus_mod.Corpus, base_url: str, rows: int, path: Path) -> Path:
    """`rows` distinct URLs over the corpus (repeat k of a file gets ``?r=k``)."""
    relpaths = corpus.files.column("relpath").to_pylist()
    urls, uids = [], []
    for i in range(rows):
        rel = relpaths[i % len(relpaths)]
        urls.append(f"{base_url}/{rel}?r={i // len(relpaths)}")
        uids.append(f"row-{i}")
    pq.write_table(pa.table({"uid": uids, "url": urls, "caption": [None] * rows},
                            schema=pa.schema([("uid", pa.string()), ("url", pa.string()),
                                              ("caption", pa.string())])), path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.download_rss", description=__doc__)
    p.add_argument("--rows", default="5000,50000", help="shard sizes to measure (comma list)")
    p.add_argument("--images", type=int, default=10_000, help="corpus size")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench" / ".work" / "download")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--timeout-s", type=float, default=3600)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work: Path = args.work_dir.resolve()
    corpus = corpus_mod.ensure(work / f"corpus-{args.images}-seed0",
                               corpus_mod.CorpusParams(images=args.images, seed=0))
    out_root = work / "rss"
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir(parents=True)
    results = []
    with NginxServer(corpus.root, out_root / "nginx", binary=ensure_nginx()) as server:
        for rows in (int(r) for r in args.rows.split(",")):
            urls = write_shard(corpus, server.base_url, rows, out_root / f"urls-{rows}.parquet")
            out = out_root / f"out-{rows}"
            cmd = [sys.executable, "-m", "clip_index.cli", "download", "--input", str(urls),
                   "--output-dir", str(out), "--image-size", str(args.image_size),
                   "--resize-mode", "keep_ratio", "--allow-private-networks"]
            logger.info("clip-index download: %d rows", rows)
            m = run_measured(cmd, timeout_s=args.timeout_s, log_path=out_root / f"{rows}.log",
                             env=_clean_env(), cwd=REPO)
            total, ok = count_clip_index_output(out)
            results.append({
                "rows": rows, "rows_out": total, "successes": ok, "wall_s": round(m.wall_s, 1),
                "images_per_s": round(ok / m.wall_s, 1), "peak_rss_mb": round(m.peak_rss_mb),
                "peak_pss_mb": round(m.peak_pss_mb),
                "max_process_rss_mb": round(m.max_process_rss_mb), "exit": m.returncode})
            shutil.rmtree(out, ignore_errors=True)
    (out_root / "results.json").write_text(json.dumps(results, indent=2))
    print("| shard rows | rows out | successes | wall s | images/s | peak RSS MB (tree) | "
          "peak PSS MB (tree) | largest process RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['rows_out']:,} | {r['successes']:,} | {r['wall_s']} | "
              f"{r['images_per_s']} | {r['peak_rss_mb']} | {r['peak_pss_mb']} | "
              f"{r['max_process_rss_mb']} |")
    return 0 if all(r["exit"] == 0 and r["rows_out"] == r["rows"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
