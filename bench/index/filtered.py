"""bench/index/filtered: filtered search on the index step's default two-stage index, with
filters keeping 50%, 10% and 1% of the rows, against exact filtered search: recall@10, whether
every query got k results, and single-query latency beside the unfiltered figure.

    PYTHONPATH=. nice python -m bench.index.filtered --n 1000000

The data is bench/index/twostage's (synthetic CLIP-like vectors, 512-d, data/ shards of 10k
rows; reused when already made) with metadata columns added as the write step carries them
(original_width, original_height, clip_l14_similarity_score, face_count, image_changed), each
drawn independently of the vectors, so a filter keeping a share p keeps about p of every
neighbourhood. Then `run_index` (defaults: the column store, the two stages, tuning) in a
fresh process, the exact filtered top-10 of each held-out query, and the measurements through
`ClipIndex` in another fresh process (one faiss thread, k=10). The 1% filter is measured twice:
as shipped (a selection of at most EXACT_SELECTION rows is scored exactly) and forced through
the first stage's IDSelector (EXACT_SELECTION = 0), which is the path at 12.8M rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.index.twostage import WORK, K, _in_child, make_folder

log = logging.getLogger("bench.index.filtered")

FILTERS: list[tuple[str, dict[str, Any] | None]] = [
    ("none", None),
    ("50%", {"min_clip_l14_score": 0.5}),
    ("10%", {"min_width": 9001}),
    ("1%", {"min_height": 9001, "max_faces": 0, "exclude_changed": True}),
    ("0.1%", {"min_width": 9001, "min_height": 9001, "max_faces": 0}),
]
SINGLE_QUERIES = 300


def add_metadata(folder: Path, seed: int = 1) -> None:
    """Append the metadata columns to every data/ shard (once): widths and heights uniform in
    1..10000, the L/14 score uniform in 0..1, faces uniform in 0..9, 5% changed images."""
    import pyarrow as pa

    from clip_index import io, schema

    marker = folder / "metadata.done"
    if marker.exists():
        return
    rng = np.random.default_rng(seed)
    for path in io.list_shards(str(folder / schema.DATA_DIR)):
        table = io.read_parquet(path)
        table = table.drop_columns([c for c in table.column_names
                                    if c not in schema.data_schema(1).names])
        n = table.num_rows
        for name, values in (
                (schema.ORIGINAL_WIDTH, pa.array(rng.integers(1, 10_001, n), pa.int32())),
                (schema.ORIGINAL_HEIGHT, pa.array(rng.integers(1, 10_001, n), pa.int32())),
                ("clip_l14_similarity_score", pa.array(rng.random(n), pa.float32())),
                (schema.FACE_COUNT, pa.array(rng.integers(0, 10, n), pa.int32())),
                (schema.IMAGE_CHANGED, pa.array(rng.random(n) < 0.05, pa.bool_()))):
            table = table.append_column(name, values)
        io.write_parquet_atomic(path, table)
    marker.write_text("ok\n")


def build(folder: str, config: dict[str, Any]) -> dict[str, Any]:
    """`run_index` with its defaults (in a fresh process); its infos and wall time."""
    from clip_index.config import IndexConfig
    from clip_index.index.build import run_index

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    infos = run_index(folder, IndexConfig(**config)).infos
    return {"build_s": time.perf_counter() - start, "infos": infos}


def exact_truth(folder: str, queries: int) -> dict[str, Any]:
    """The exact top-k of each query among the rows each filter keeps (masks from the index's
    own column store, vectors from data/), and each filter's share of rows."""
    from clip_index import io, schema
    from clip_index.index.staging import embeddings_array
    from clip_index.search.searcher import ClipIndex

    ix = ClipIndex(folder)
    q = np.load(os.path.join(folder, "queries.npy"))[:queries]
    masks = {}
    for name, f in FILTERS:
        sel = ix.selection(f)
        masks[name] = np.ones(len(ix), bool) if sel is None else \
            np.unpackbits(sel.bits, count=sel.rows, bitorder="little").astype(bool)
    best = {name: (np.full((len(q), K), -np.inf, np.float32), np.full((len(q), K), -1))
            for name in masks}
    offset = 0
    for path in io.list_shards(os.path.join(folder, schema.DATA_DIR)):
        x = embeddings_array(io.read_parquet(path, columns=[schema.EMBEDDING]))
        sims = q @ x.T
        ids = np.arange(offset, offset + len(x))
        for name, mask in masks.items():
            s = np.where(mask[offset:offset + len(x)], sims, -np.inf)
            scores, found = best[name]
            both_s = np.concatenate([scores, s], axis=1)
            both_i = np.concatenate([found, np.broadcast_to(ids, s.shape)], axis=1)
            part = np.argpartition(-both_s, K - 1, axis=1)[:, :K]
            part_s = np.take_along_axis(both_s, part, 1)
            top = np.take_along_axis(part, np.argsort(-part_s, axis=1), 1)
            best[name] = (np.take_along_axis(both_s, top, 1), np.take_along_axis(both_i, top, 1))
        offset += len(x)
    return {name: {"share": float(masks[name].mean()), "truth": best[name][1].tolist()}
            for name in masks}


def measure(folder: str, queries: int, truth: dict[str, Any],
            exact_selection: int | None) -> list[dict[str, Any]]:
    """Recall@10 against the exact filtered top-10, the share of queries with k results, the
    first use of each filter (its bitmap) and single-query p50/p99 through ClipIndex."""
    import clip_index.index.rerank as rerank
    from clip_index.search.searcher import ClipIndex

    label = ""
    if exact_selection is not None:
        rerank.EXACT_SELECTION = exact_selection  # type: ignore[misc]
        label = " (IDSelector path forced)"
    ix = ClipIndex(folder, threads=1)
    q = np.load(os.path.join(folder, "queries.npy"))[:queries]
    rows = []
    for name, f in FILTERS:
        if exact_selection is not None and name not in ("1%", "0.1%"):
            continue
        start = time.perf_counter()
        ix.selection(f)
        bitmap_ms = (time.perf_counter() - start) * 1000
        t = truth[name]["truth"]
        found = [[r.id for r in row] for row in ix.search_embedding(q, K, filters=f)]
        matching = int(round(truth[name]["share"] * len(ix)))
        recall = np.mean([len(set(a) & {i for i in b if i >= 0}) / len([i for i in b if i >= 0])
                          for a, b in zip(found, t)])
        full = np.mean([len(a) == min(K, matching) for a in found])
        times = []
        for row in q[:SINGLE_QUERIES]:
            s = time.perf_counter()
            ix.search_embedding(row, K, filters=f)
            times.append((time.perf_counter() - s) * 1000)
        rows.append({"filter": name + label, "spec": f, "share": truth[name]["share"],
                     "recall_at_10": float(recall), "k_results_share": float(full),
                     "bitmap_ms": bitmap_ms, "p50_ms": float(np.percentile(times, 50)),
                     "p99_ms": float(np.percentile(times, 99))})
        log.info("%s", rows[-1])
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| filter | rows kept | recall@10 vs exact filtered | queries with k "
             "results | bitmap, first use | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        spec = ", ".join(f"{k}={v}" for k, v in (r["spec"] or {}).items()) or "-"
        lines.append(f"| {r['filter']}: {spec} | {100 * r['share']:.2f}% | "
                     f"{r['recall_at_10']:.3f} | {100 * r['k_results_share']:.0f}% | "
                     f"{r['bitmap_ms']:.0f} ms | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", default="clustered", help="clustered, wide or random")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--reuse-index", action="store_true",
                        help="measure the index (and exact results) an earlier run left")
    parser.add_argument("--force-two-stage", action="store_true",
                        help="two stages below the default two_stage_min_vectors (dev runs)")
    parser.add_argument("--output", default=str(WORK / "filtered.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    WORK.mkdir(parents=True, exist_ok=True)
    start, load = time.perf_counter(), os.getloadavg()
    folder = make_folder(args.kind, args.n, args.dim, args.queries)
    add_metadata(folder)
    infos_path = folder / "index_infos.json"
    if args.reuse_index and infos_path.exists():
        infos = json.loads(infos_path.read_text())
        built = {"build_s": infos.get("seconds", float("nan")), "infos": infos}
    else:
        built = _in_child(build, str(folder),
                          {"two_stage_min_vectors": 1} if args.force_two_stage else {})
        (folder / "filtered-truth.json").unlink(missing_ok=True)
    infos = built["infos"]
    log.info("built in %.0fs: %s %s", built["build_s"], infos["index_key"], infos["index_param"])
    truth_path = folder / "filtered-truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.exists() else {}
    if set(truth) != {name for name, _ in FILTERS} or \
            any(len(t["truth"]) != args.queries for t in truth.values()):
        truth = _in_child(exact_truth, str(folder), args.queries)
        truth_path.write_text(json.dumps(truth))
    rows = _in_child(measure, str(folder), args.queries, truth, None)
    rows += _in_child(measure, str(folder), args.queries, truth, 0)
    from importlib.metadata import version

    depth = infos.get("rerank_depth", "-")
    header = (f"{args.kind} {args.n:,} × {args.dim}, {infos['index_key']} "
              f"({infos['index_param']}, re-rank depth {depth}), built in "
              f"{built['build_s']:.0f}s; "
              f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), load average "
              f"at start {load[0]:.1f}, end {os.getloadavg()[0]:.1f}; faiss-cpu "
              f"{version('faiss-cpu')}, numpy {version('numpy')}; {args.queries} held-out "
              f"queries (latency: {SINGLE_QUERIES} single queries, one faiss thread); "
              f"{time.perf_counter() - start:.0f}s in all")
    Path(args.output).write_text(json.dumps({"header": header, "rows": rows,
                                             "infos": infos}, indent=2))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
