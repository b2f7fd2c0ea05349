"""bench/index/query_parts: where one query's time goes in an opened two-stage index, and the
figures behind the query path's choices, on a folder built by `bench.index.twostage`.

    PYTHONPATH=. python -m bench.index.query_parts bench/.work/index-twostage/clustered-1000000x512

Prints (all single-threaded, p50 over 300 held-out queries, after one warm-up pass):
- inside full queries: first stage alone, both stages (faiss `IndexRefine`, what queries run),
  the Python re-rank of the same candidates (what `IndexRefine` replaced), result rows, and
  `search_embedding` whole;
- each part back to back (the same call repeated, so its data stay in the CPU caches);
- float16 widening of a 48 × 512 block: numpy's cast against faiss's fp16 decoder, and the
  page faults per query of widening all candidates at once against `RerankStore.scores`;
- id-mapping rows for 10 ids: pyarrow's ``Table.take``, a pyarrow scalar per value, and
  `IdMapping.rows` (values from the Arrow buffers), and the
  private memory of the mapping read from parquet against memory-mapped.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def p50_us(call: Callable[[int], object], n: int = 300) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1e6)
    return float(np.percentile(times, 50))


def faults(call: Callable[[int], object], n: int = 300) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(n):
        call(i)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))


def main() -> None:
    from clip_index.index.layout import IdMapping, read_mapping
    from clip_index.index.rerank import rerank, widen_float16
    from clip_index.search.searcher import ClipIndex
    from clip_index.vectors import normalise

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a built two-stage bench.index.twostage folder")
    args = parser.parse_args()
    index = ClipIndex(args.folder, threads=1)
    two_stage, store = index.searcher, index.store
    if store is None:
        raise SystemExit(f"{args.folder}: not a two-stage index")
    depth = two_stage.depth
    queries = normalise(np.load(args.folder / "queries.npy"))[:300]
    index.search_embedding(queries, 10)  # warm: the pages of every candidate row are mapped
    _, candidates = two_stage.first_stage.search(queries, depth)
    print(f"{args.folder.name}: {index.infos['index_key']} ({index.infos['index_param']}), "
          f"{depth} candidates")

    parts: dict[str, list[float]] = {"first stage": [], "two stages (IndexRefine)": [],
                                     "Python re-rank": [], "result rows": [],
                                     "search_embedding": []}
    for q in queries:
        t0 = time.perf_counter()
        _, cand = two_stage.first_stage.search(q[None, :], depth)
        t1 = time.perf_counter()
        scores, ids = two_stage.search(q[None, :], 10)
        t2 = time.perf_counter()
        rerank(store, q[None, :], cand, 10)
        t3 = time.perf_counter()
        index._results(scores[0], ids[0])
        t4 = time.perf_counter()
        index.search_embedding(q, 10)
        t5 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[name].append(seconds * 1000)
    for name, ms in parts.items():
        print(f"inside full queries: {name:26s} p50 {np.percentile(ms, 50):.3f} ms")
    first = p50_us(lambda i: two_stage.first_stage.search(queries[i:i + 1], depth))
    both = p50_us(lambda i: two_stage.search(queries[i:i + 1], 10))
    again = p50_us(lambda i: rerank(store, queries[i:i + 1], candidates[i:i + 1], 10))
    print(f"back to back: first stage p50 {first / 1e3:.3f} ms; two stages (IndexRefine) "
          f"{both / 1e3:.3f} ms; Python re-rank alone {again / 1e3:.3f} ms")

    block = store.rows(np.sort(candidates[0])[:48])
    print(f"widen 48 × {block.shape[1]} float16: numpy cast "
          f"{p50_us(lambda i: block.astype(np.float32)):.0f} µs, faiss fp16 decoder "
          f"{p50_us(lambda i: widen_float16(block)):.0f} µs")
    sorted_cand = [np.sort(c[c >= 0]) for c in candidates]

    def all_at_once(i: int) -> np.ndarray:
        rows = store.rows(sorted_cand[i]).astype(np.float32)
        return np.einsum("ij,j->i", rows, queries[i])

    print(f"page faults per query, {depth} candidates: widened all at once "
          f"{faults(all_at_once):.0f} ({p50_us(all_at_once):.0f} µs), in blocks "
          f"(RerankStore.scores) {faults(lambda i: store.scores(sorted_cand[i], queries[i])):.0f}"
          f" ({p50_us(lambda i: store.scores(sorted_cand[i], queries[i])):.0f} µs)")

    table = index.mapping.table.select(list(IdMapping.COLUMNS))
    ten = [candidates[i, :10] for i in range(len(candidates))]
    chunks = [[batch.column(j) for batch in table.to_batches()] for j in range(3)]

    def scalars(i: int) -> list[dict[str, object]]:  # the read before the buffers: as_py each
        chunk = np.searchsorted(index.mapping.offsets, ten[i], side="right") - 1
        local = ten[i] - index.mapping.offsets[chunk]
        return [{name: column[c][j].as_py() for name, column in zip(IdMapping.COLUMNS, chunks)}
                for c, j in zip(chunk.tolist(), local.tolist())]

    for i in range(len(ten)):  # both then read rows already in the page tables and caches
        assert scalars(i) == index.mapping.rows(ten[i])
    scalars_us = p50_us(scalars)
    rows_us = p50_us(lambda i: index.mapping.rows(ten[i]))
    print(f"10 mapping rows over {table.column(0).num_chunks} chunks: Table.take "
          f"{p50_us(lambda i: table.take(ten[i]).to_pylist(), n=30):.0f} µs, pyarrow scalars "
          f"(as_py per value) {scalars_us:.0f} µs, IdMapping.rows (Arrow buffers) "
          f"{rows_us:.0f} µs")
    before = rss_anon_mb()
    parquet = read_mapping(dataclasses.replace(index.layout, mapping_file=""))
    print(f"id mapping read from parquet: +{rss_anon_mb() - before:.0f} MB private memory "
          f"({parquet.nbytes / 1e6:.0f} MB of data); memory-mapped: opened with the index")


if __name__ == "__main__":
    main()
