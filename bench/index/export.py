"""bench/index/export: `clip-index export` (every match above a threshold, many prompts in one
exact scan of the memory-mapped re-rank vectors) on a 1M × 512 two-stage index of synthetic
CLIP-like vectors, checked against brute force, beside a range search in the first stage with
an exact re-check (the method it was chosen over). One run prints one Markdown table.

    PYTHONPATH=. python -m bench.index.export            # 1M × 512, 100 prompts
    PYTHONPATH=. python -m bench.index.export --n 200000 --prompts 20   # a quick run

The folder and its two-stage index are the ones `bench.index.twostage` makes (cached under
bench/.work/index-twostage/); the prompts are its held-out queries. Thresholds come from the
score distribution: the score a `--match-fractions` share of (prompt, vector) pairs reach.

Exactness: brute force scores every pair with numpy over all stored vectors (float16 widened to
float32, as stored): in float64 (no rounding question at the threshold: the export must give
the same pairs) and in float32 (a plain `q @ x.T`: pairs that differ must lie within float32's
error of the threshold); scores must agree within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.index.twostage import WORK, _in_child, _peak_rss_mb, build, make_folder
from clip_index.search.scan import exact_scores

log = logging.getLogger("bench.index.export")
OUT = WORK.parent / "export"


def export(folder: str, output: str, prompts: np.ndarray, threshold: float,
           block_rows: int) -> dict[str, Any]:
    """`run_export` in this (fresh) process: its summary, wall seconds and peak RSS."""
    from clip_index.search.export import Prompts, run_export
    from clip_index.search.export_config import ExportConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    run_export(folder, output, ExportConfig(threshold, block_rows=block_rows),
               Prompts(embeddings=prompts))
    summary: dict[str, Any] = json.loads(Path(output, "summary.json").read_text())
    return {**summary, "wall_s": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


def stored_vectors(folder: Path) -> np.ndarray:
    from clip_index.index.rerank import RERANK_FILE, RerankStore

    store = RerankStore(str(folder / "faiss" / RERANK_FILE))
    out = np.empty((len(store), store.dim), dtype=np.float32)
    for start, rows in store.iter_chunks(65_536):
        out[start:start + len(rows)] = rows
    return out


def brute_force(x: np.ndarray, q: np.ndarray, threshold: float
                ) -> tuple[dict[tuple[int, int], float], set[tuple[int, int]], float]:
    """(float64 pairs → score, float32 pairs, seconds of the float32 pass)."""
    start = time.perf_counter()
    s32 = q @ x.T
    p, i = np.nonzero(s32 >= np.float32(threshold))
    seconds = time.perf_counter() - start
    pairs32 = set(zip(p.tolist(), i.tolist()))
    del s32
    truth: dict[tuple[int, int], float] = {}
    q64 = q.astype(np.float64)
    for lo in range(0, len(x), 100_000):
        s = q64 @ x[lo:lo + 100_000].astype(np.float64).T
        p, i = np.nonzero(s >= threshold)
        truth.update(zip(zip(p.tolist(), (i + lo).tolist()), s[p, i].tolist()))
    return truth, pairs32, seconds


def range_search(folder: Path, x: np.ndarray, q: np.ndarray, threshold: float,
                 truth: set[tuple[int, int]], margin: float, nprobe: int) -> dict[str, Any]:
    """The first stage's range search at radius threshold − margin (approximate PQ scores),
    candidates re-checked against the stored vectors: time, candidates and recall of the
    exact set (never above the exact scan's 1.0: no margin is provably enough)."""
    import faiss

    index = faiss.read_index(str(folder / "faiss" / "knn.index"))
    start = time.perf_counter()
    lims, _, ids = index.range_search(q, threshold - margin,
                                      params=faiss.SearchParametersIVF(nprobe=nprobe))
    lims = lims.astype(np.int64)
    prompt = np.repeat(np.arange(len(q)), np.diff(lims))
    exact = exact_scores(q, x, prompt, ids)
    keep = exact >= threshold
    seconds = time.perf_counter() - start
    found = set(zip(prompt[keep].tolist(), ids[keep].tolist()))
    return {"method": f"first-stage range search, nprobe={nprobe}, margin {margin}",
            "seconds": seconds, "candidates": int(lims[-1]), "found": len(found),
            "recall": len(found & truth) / max(len(truth), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--match-fractions", default="0.001,0.01",
                        help="thresholds: the score this share of all pairs reaches")
    parser.add_argument("--block-rows", type=int, default=32_768)
    parser.add_argument("--margins", default="0,0.05,0.1",
                        help="range-search radius = threshold − margin")
    parser.add_argument("--output", default=str(OUT / "results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from importlib.metadata import version

    load = os.getloadavg()
    folder = make_folder("clustered", args.n, args.dim, 1000)
    if not (folder / "faiss" / "knn.index").exists():
        _in_child(build, str(folder), {"two_stage_min_vectors": 1, "recall_queries": 200})
    infos = json.loads((folder / "index_infos.json").read_text())
    q = np.load(folder / "queries.npy")[:args.prompts]
    x = stored_vectors(folder)
    sample = q @ x[::max(1, len(x) // 50_000)].T
    rows: list[dict[str, Any]] = []
    for fraction in (float(f) for f in args.match_fractions.split(",")):
        threshold = round(float(np.quantile(sample, 1 - fraction)), 4)
        out = OUT / f"t{threshold}"
        shutil.rmtree(out, ignore_errors=True)
        summary = _in_child(export, str(folder), str(out), q, threshold, args.block_rows)
        truth, pairs32, brute_s = brute_force(x, q, threshold)
        import pyarrow.parquet as pq

        table = pq.read_table(out / "matches.parquet", columns=["prompt_index", "i", "score"])
        got = dict(zip(zip(table.column("prompt_index").to_pylist(),
                           table.column("i").to_pylist()), table.column("score").to_pylist()))
        # float32 brute force: pairs it disagrees on must sit within its error of the threshold
        differ = sorted(pairs32 ^ set(got))
        p, i = (np.array(v, dtype=np.int64) for v in zip(*differ)) if differ else (
            np.empty(0, np.int64), np.empty(0, np.int64))
        edge = float(np.max(np.abs(exact_scores(q, x, p, i) - threshold), initial=0.0))
        row = {"threshold": threshold, "fraction": fraction, "matches": len(got),
               "exact_vs_float64": got.keys() == truth.keys(),
               "max_score_diff": max((abs(got[k] - truth[k]) for k in truth), default=0.0),
               "float32_brute_differs": len(differ), "float32_differs_within": edge,
               "brute_float32_s": brute_s, **{k: summary[k] for k in (
                   "scan_seconds", "seconds", "wall_s", "peak_rss_mb", "vectors_per_s",
                   "pairs_per_s", "source", "unique_images")},
               "uids_npy": summary["files"]["uids"]}
        log.info("%s", row)
        nlist = int(infos["stages"]["first"]["nlist"])
        nprobe = int(str(infos["index_param"]).split("=")[-1])
        row["range"] = [range_search(folder, x, q, threshold, set(truth), float(m), p)
                        for m in args.margins.split(",") for p in (nprobe, nlist)]
        rows.append(row)
        OUT.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(rows, indent=2, default=str))
    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), load average "
              f"at start {load[0]:.1f}, now {os.getloadavg()[0]:.1f}; faiss-cpu "
              f"{version('faiss-cpu')}, numpy {version('numpy')}, pyarrow {version('pyarrow')};"
              f" {args.n} × {args.dim} ({infos['index_key']}, re-rank "
              f"{infos['stages']['rerank']['dtype']}), {len(q)} prompts, block_rows "
              f"{args.block_rows}")
    print(markdown(rows, header))


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| threshold (share of pairs) | method | seconds | pairs/s | matches "
             "| recall of the exact set | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['threshold']} ({r['fraction']}) | exact scan (`clip-index export`) | "
            f"{r['scan_seconds']:.2f} (whole call {r['seconds']:.1f}) | "
            f"{r['pairs_per_s']:.3g} | {r['matches']} | 1.0 (same pairs as float64 brute "
            f"force: {r['exact_vs_float64']}; max score diff {r['max_score_diff']:.1e}) | peak "
            f"RSS {r['peak_rss_mb']:.0f} MB; float32 `q @ x.T` brute force "
            f"{r['brute_float32_s']:.2f} s, differs on {r['float32_brute_differs']} pairs "
            f"(within {r['float32_differs_within']:.1e} of the threshold) |")
        for m in r["range"]:
            lines.append(f"| | {m['method']} + exact re-check | {m['seconds']:.2f} | - | "
                         f"{m['found']} | {m['recall']:.4f} | {m['candidates']} candidates |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
