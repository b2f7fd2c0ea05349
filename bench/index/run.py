"""bench/index: build time, peak RAM, size, recall@1/@10 on held-out queries, single-query
p50/p99 and batch throughput for clip-index's index, an exact Flat index and autofaiss with its
defaults, on 1M × 512 synthetic CLIP-like vectors (and a published clip-index folder's real
embeddings, and random vectors as the worst case). One run prints a Markdown fragment.

    PYTHONPATH=. python -m bench.index.run --n 1000000 --real bench/.work/sample-demo/output

Every index is built in its own process (spawned), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.index")
WORK = Path(__file__).resolve().parents[1] / ".work" / "index"
K = 10
PART_ROWS = 100_000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _batch_qps(index: Any, queries: np.ndarray) -> float:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    index.search(queries, K)
    return len(queries) / (time.perf_counter() - start)


def _quality(index: Any, queries: np.ndarray, exact: np.ndarray,
             latency_queries: int = 200) -> dict[str, float]:
    from clip_index.index.tune import latency_ms, recall_at, search_ids

    approx = search_ids(index, queries, K)
    p50, p99 = latency_ms(index, queries, K, latency_queries)
    return {"recall_at_1": recall_at(approx, exact, 1), "recall_at_10": recall_at(approx, exact, K),
            "p50_ms": p50, "p99_ms": p99, "batch_qps": _batch_qps(index, queries)}


def _split(queries: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, ...]:
    half = len(queries) // 2  # the first half tunes clip-index, the second half measures all
    return queries[:half], exact[:half], queries[half:], exact[half:]


def measure_flat(folder: str, queries_path: str, truth_path: str) -> dict[str, Any]:
    """Exact search: the ground truth (saved) and the Flat baseline."""
    import faiss

    from clip_index.index.tune import VectorParts

    parts = VectorParts.from_folder(folder)
    start = time.perf_counter()
    index = faiss.IndexFlatIP(parts.dim)
    for part in parts.parts:
        index.add(np.ascontiguousarray(part, dtype=np.float32))
    build_s = time.perf_counter() - start
    queries = np.load(queries_path)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, exact = index.search(queries, K)
    np.save(truth_path, exact)
    _, _, eval_q, eval_exact = _split(queries, exact)
    row = _quality(index, eval_q, eval_exact, latency_queries=30)
    return {"name": "Flat (exact)", "index_key": "Flat", "index_param": "", "build_s": build_s,
            "size_mb": index.ntotal * index.d * 4 / 1e6, "peak_rss_mb": _peak_rss_mb(), **row}


def measure_autofaiss(folder: str, queries_path: str, truth_path: str,
                      clip_index_too: bool) -> list[dict[str, Any]]:
    """autofaiss.build_index with every setting at its default; when clip-index's defaults pick
    the same index key, the same build is then tuned the clip-index way and measured again."""
    from autofaiss import build_index

    from clip_index.index.tune import VectorParts, tune_and_measure

    path = os.path.join(os.path.dirname(truth_path), "autofaiss.index")
    start = time.perf_counter()
    index, infos = build_index(embeddings=folder, file_format="npy", index_path=path,
                               index_infos_path=path + ".json", metric_type="ip",
                               verbose=logging.WARNING)
    build_s = time.perf_counter() - start
    if index is None:
        raise RuntimeError("autofaiss built nothing with its defaults")
    size_mb = os.path.getsize(path) / 1e6
    os.remove(path)
    queries, exact = np.load(queries_path), np.load(truth_path)
    tune_q, tune_exact, eval_q, eval_exact = _split(queries, exact)
    rows = [{"name": "autofaiss defaults", "index_key": infos["index_key"],
             "index_param": infos["index_param"], "build_s": build_s, "size_mb": size_mb,
             "peak_rss_mb": _peak_rss_mb(), **_quality(index, eval_q, eval_exact)}]
    if clip_index_too:
        m = tune_and_measure(index, VectorParts.from_folder(folder), len(queries), 0.95, K,
                             queries=queries, exact=exact, max_query_time_ms=10.0)
        rows.append({"name": "clip-index (default settings)", "index_key": infos["index_key"],
                     "index_param": m["index_param"], "build_s": build_s, "size_mb": size_mb,
                     "peak_rss_mb": _peak_rss_mb(), **_quality(index, eval_q, eval_exact)})
    return rows


def measure_clip_index(folder: str, queries_path: str | None, truth_path: str | None,
                       label: str) -> dict[str, Any]:
    """clip-index's own path: build_with_autofaiss with IndexConfig() defaults, then tune."""
    import tempfile

    from clip_index.config import IndexConfig
    from clip_index.index.build import build_with_autofaiss
    from clip_index.index.tune import VectorParts, tune_and_measure

    parts = VectorParts.from_folder(folder)
    config = IndexConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "knn.index")
        start = time.perf_counter()
        index, infos = build_with_autofaiss(folder, path, config, len(parts), parts.dim)
        build_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 1e6
    if queries_path and truth_path:
        queries, exact = np.load(queries_path), np.load(truth_path)
        m = tune_and_measure(index, parts, len(queries), config.target_recall, K,
                             queries=queries, exact=exact,
                             max_query_time_ms=config.max_index_query_time_ms)
        eval_q = queries[len(queries) // 2:]
    else:  # a published folder: leave-one-out queries from the indexed vectors
        m = tune_and_measure(index, parts, config.recall_queries, config.target_recall, K,
                             max_query_time_ms=config.max_index_query_time_ms)
        eval_q = parts.take(np.arange(min(len(parts), 1000)))
    return {"name": label, "index_key": infos["index_key"], "index_param": m["index_param"],
            "build_s": build_s, "size_mb": size_mb, "peak_rss_mb": _peak_rss_mb(),
            "recall_at_1": m["recall_at_1"], "recall_at_10": m[f"recall_at_{K}"],
            "p50_ms": m["latency_p50_ms"], "p99_ms": m["latency_p99_ms"],
            "batch_qps": _batch_qps(index, eval_q), "queries": m["recall_queries_kind"]}


def _in_child(func: Any, *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(func, *args).result()


def _stage(name: str, vectors: np.ndarray, queries: np.ndarray) -> tuple[str, str]:
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, len(vectors), PART_ROWS)):
        np.save(folder / f"{i:09d}.npy", vectors[start:start + PART_ROWS])
    qpath = WORK / f"{name}-queries.npy"
    np.save(qpath, queries)
    return str(folder), str(qpath)


def synthetic(n: int, dim: int, queries: int, kind: str) -> tuple[str, str]:
    from bench.index.data import clustered_dataset, random_vectors

    name = f"{kind}-{n}x{dim}"
    folder, qpath = WORK / name, WORK / f"{name}-queries.npy"
    if folder.is_dir() and qpath.exists():
        return str(folder), str(qpath)
    start = time.perf_counter()
    if kind == "clustered":
        vectors, q = clustered_dataset(n, queries, dim)
    else:
        both = random_vectors(n + queries, dim)
        vectors, q = both[:n], both[n:]
    out = _stage(name, vectors, q)
    log.info("generated %s in %.0fs", name, time.perf_counter() - start)
    return out


def real(output_dir: str) -> str:
    """A published folder's data/ embeddings, staged as .npy parts."""
    from clip_index import io, schema
    from clip_index.index.staging import embeddings_array

    folder = WORK / "real"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npy"):
        old.unlink()
    for i, path in enumerate(io.list_shards(io.join(output_dir, schema.DATA_DIR))):
        np.save(folder / f"{i:09d}.npy", embeddings_array(io.read_parquet(path)))
    return str(folder)


def bench_dataset(label: str, folder: str, qpath: str, all_variants: bool) -> list[dict[str, Any]]:
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    from clip_index.config import IndexConfig
    from clip_index.index.tune import VectorParts

    truth = str(Path(folder).with_suffix("")) + "-truth.npy"
    rows = [_in_child(measure_flat, folder, qpath, truth)] if all_variants else []
    if not all_variants:
        _in_child(measure_flat, folder, qpath, truth)
    parts = VectorParts.from_folder(folder)
    n, dim = len(parts), parts.dim
    c = IndexConfig()
    ours = get_optimal_index_keys_v2(n, dim, c.max_index_memory_usage)[0]
    theirs = get_optimal_index_keys_v2(n, dim, "16G")[0]  # autofaiss's default budget
    if all_variants:
        rows += _in_child(measure_autofaiss, folder, qpath, truth, ours == theirs)
    if not all_variants or ours != theirs:
        rows.append(_in_child(measure_clip_index, folder, qpath, truth, "clip-index"))
    for row in rows:
        row["dataset"] = label
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| data | index | key (param) | build s | peak RSS MB | size MB | recall@1 | "
             "recall@10 | p50 ms | p99 ms | batch q/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['name']} | `{r['index_key']}` ({r['index_param'] or '-'}) "
            f"| {r['build_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.0f} | "
            f"{r['recall_at_1']:.3f} | {r['recall_at_10']:.3f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['batch_qps']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0 = skip)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--random-n", type=int, default=100_000,
                        help="random (worst case) vectors for clip-index's index (0 = skip)")
    parser.add_argument("--real", default="", help="a published clip-index folder (optional)")
    parser.add_argument("--output", default=str(WORK / "results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    load = os.getloadavg()
    rows = []
    if args.n:
        folder, qpath = synthetic(args.n, args.dim, args.queries, "clustered")
        rows += bench_dataset(f"clustered {args.n:,}×{args.dim}", folder, qpath, True)
    if args.real:
        from clip_index.index.tune import VectorParts

        folder = real(args.real)
        n = len(VectorParts.from_folder(folder))
        rows.append({**_in_child(measure_clip_index, folder, None, None, "clip-index"),
                     "dataset": f"sample ({n} real embeddings)"})
    if args.random_n:
        folder, qpath = synthetic(args.random_n, args.dim, args.queries, "random")
        rows += bench_dataset(f"random {args.random_n:,}×{args.dim} (worst case)", folder,
                              qpath, False)
    from importlib.metadata import version

    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores, load average at start "
              f"{load[0]:.1f}, at end {os.getloadavg()[0]:.1f}; faiss-cpu {version('faiss-cpu')}, "
              f"autofaiss {version('autofaiss')}; {args.queries} held-out queries (half tune "
              f"clip-index, half measure); total {time.perf_counter() - start:.0f}s")
    Path(args.output).write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
