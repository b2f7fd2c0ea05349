"""bench/index/extrapolate: the two-stage index at DataComp-small's size (12.8M × 512) on the
pipeline's index task (14 vCPU, 48 GB: `index_cpu`, `index_memory`), extrapolated from a
`bench.index.twostage` run.

    PYTHONPATH=. python -m bench.index.extrapolate bench/.work/index-twostage/results-1m.json

Each figure scales a measured one by a stated rule; the measured column is printed beside it.
Assumptions: files and memory grow linearly with the vectors except the centroids (an opened
index's private memory: its measured fixed part + the first stage; the id mapping and the
re-rank vectors are memory-mapped files); k-means training costs
(sample × lists × dim × iterations) and spreads over the cores (BLAS), as do the add (assign +
encode) and the exact ground truth of tuning; staging (reading parquet, writing the mapping and
the re-rank file) is one thread and does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clip_index.index.twostage import (
    MAX_TRAIN,
    MIN_TRAIN,
    TRAIN_PER_LIST,
    first_stage_key,
    nlist_of,
)

TARGET_N = 12_800_000
TARGET_CORES, MEASURED_CORES = 14, 2


def extrapolate(row: dict[str, Any], n: int = TARGET_N,
                cores: int = TARGET_CORES) -> list[tuple[str, str, str]]:
    """(what, measured, extrapolated) rows for one measured two-stage build."""
    i = row["infos"]
    m, dim = i["vectors"], i["dim"]
    scale, speedup = n / m, cores / MEASURED_CORES
    first = i["stages"]["first"]
    key = first_stage_key(n, dim)
    nlist_m, nlist_n = first["nlist"], nlist_of(key)
    train_n = max(MIN_TRAIN, min(MAX_TRAIN, TRAIN_PER_LIST * nlist_n))
    centroids_m, centroids_n = nlist_m * dim * 4, nlist_n * dim * 4
    hnsw_links = nlist_n * 64 * 4 if "HNSW" in key else 0  # 2×32 neighbours at level 0
    index_b = (i["size_bytes"] - centroids_m) * scale + centroids_n + hnsw_links
    rerank_b = i["rerank_size_bytes"] * scale
    train_s = (i["train_seconds"] * (train_n * nlist_n) / (first["train_vectors"] * nlist_m)
               / speedup)
    add_s = i["add_seconds"] * scale / speedup
    stage_s = i["stage_seconds"] * scale
    tune_s = (i["seconds"] - i["build_seconds"]) * scale / speedup
    sample_m, sample_n = first["train_vectors"] * dim * 4, train_n * dim * 4
    other_m = row["build_peak_rss_mb"] * 1e6 - sample_m - i["size_bytes"]
    peak_b = sample_n + index_b + max(other_m, 0)
    mapping_b = row["mapping_file_mb"] * 1e6 * scale
    # opened, private memory: a fixed part (Python objects, allocator pools) + the first stage
    fixed_b = row["open_anon_mb"] * 1e6 - i["size_bytes"]
    opened_b = max(fixed_b, 0) + index_b
    mb = 1e6
    return [
        ("first stage", f"`{i['index_key']}`", f"`{key}`"),
        ("training sample, vectors", f"{first['train_vectors']:,}", f"{train_n:,}"),
        ("first stage file (`knn.index`)", f"{i['size_bytes'] / mb:,.0f} MB",
         f"{index_b / mb:,.0f} MB"),
        ("re-rank file (float16, memory-mapped)", f"{i['rerank_size_bytes'] / mb:,.0f} MB",
         f"{rerank_b / mb:,.0f} MB"),
        ("id mapping file (Arrow, memory-mapped)", f"{row['mapping_file_mb']:,.0f} MB",
         f"{mapping_b / mb:,.0f} MB"),
        ("private memory of an opened index (the mapped files' pages come and go)",
         f"{row['open_anon_mb']:,.0f} MB", f"{opened_b / mb:,.0f} MB"),
        ("build peak memory", f"{row['build_peak_rss_mb']:,.0f} MB", f"{peak_b / mb:,.0f} MB"),
        ("stage (one pass over data/, one thread)", f"{i['stage_seconds']:,.0f} s",
         f"{stage_s / 60:,.0f} min"),
        ("train (k-means + PQ)", f"{i['train_seconds']:,.0f} s", f"{train_s / 60:,.0f} min"),
        ("add", f"{i['add_seconds']:,.0f} s", f"{add_s / 60:,.0f} min"),
        ("tune + measure (exact ground truth of 1,000 queries)",
         f"{i['seconds'] - i['build_seconds']:,.0f} s", f"{tune_s / 60:,.0f} min"),
        ("index step in all",
         f"{i['seconds']:,.0f} s", f"{(stage_s + train_s + add_s + tune_s) / 60:,.0f} min"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="results JSON of bench.index.twostage")
    parser.add_argument("--data", default="clustered", help="which distribution's row")
    args = parser.parse_args()
    rows = json.loads(Path(args.results).read_text())["rows"]
    row = max((r for r in rows if r["data"].startswith(args.data)
               and r["infos"].get("two_stage")), key=lambda r: r["infos"]["vectors"])
    n = row["infos"]["vectors"]
    print(f"| | measured: {n:,} × {row['infos']['dim']}, 2 shared cores | extrapolated: "
          f"{TARGET_N:,}, {TARGET_CORES} vCPU |")
    print("|---|---|---|")
    for what, measured, extrapolated in extrapolate(row):
        print(f"| {what} | {measured} | {extrapolated} |")


if __name__ == "__main__":
    main()
