"""bench/index/firststage: first-stage candidates for the two-stage index, side by side on one
folder of `bench.index.twostage` (its re-rank file holds the vectors): train and add time, then
for each (nprobe, re-rank depth) the re-ranked recall@10 on the held-out queries and the p50 of
one query (one thread, three interleaved rounds of 100 queries).

    PYTHONPATH=. python -m bench.index.firststage \
        --folder bench/.work/index-twostage/clustered-1000000x512 \
        --variants 'IVF2048,PQ128x4fs|81920|10;IVF4096_HNSW32,PQ128x4fs|163840|5'

A variant is `factory key|training vectors|k-means iterations`; built indexes are kept in
``bench/.work/firststage/`` so a re-run measures without training again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

WORK = Path(__file__).resolve().parents[1] / ".work" / "firststage"
GRID = "16/100,32/100,48/100,64/100,32/200,48/200,64/200,96/200"


def build(store: Any, key: str, train_n: int, niter: int) -> tuple[Any, dict[str, float]]:
    """The first stage `key` trained on `train_n` stored vectors and filled with all of them
    (cached by key, sample and iterations)."""
    import faiss

    from clip_index.index.twostage import make_first_stage

    cache = WORK / f"{key.replace(',', '_')}-{train_n}-{niter}-{len(store)}.index"
    if cache.exists():
        return faiss.read_index(str(cache)), {}
    picks = np.sort(np.random.default_rng(0).choice(len(store), train_n, replace=False))
    index = make_first_stage(key, store.dim)
    faiss.extract_index_ivf(index).cp.niter = niter
    start = time.perf_counter()
    index.train(store.take(picks))
    trained = time.perf_counter()
    for _, chunk in store.iter_chunks():
        index.add(chunk)
    times = {"train_s": round(trained - start, 1), "add_s": round(time.perf_counter() - trained, 1)}
    WORK.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(cache))
    return index, times


def measure(index: Any, store: Any, queries: np.ndarray, truth: np.ndarray,
            grid: list[tuple[int, int]]) -> dict[str, list[float]]:
    """{"nprobe/depth": [recall@10, p50 ms]} through `TwoStageIndex`."""
    import faiss

    from clip_index.index.rerank import TwoStageIndex
    from clip_index.index.tune import recall_at

    space = faiss.ParameterSpace()
    hnsw = "HNSW" in type(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)).__name__

    def set_nprobe(nprobe: int) -> None:
        param = f"nprobe={nprobe}" + (f",quantizer_efSearch={max(2 * nprobe, 64)}" if hnsw
                                      else "")
        space.set_index_parameters(index, param)

    out: dict[str, list[float]] = {}
    for nprobe, depth in grid:
        set_nprobe(nprobe)
        _, ids = TwoStageIndex(index, store, depth).search(queries, 10)
        out[f"{nprobe}/{depth}"] = [round(recall_at(ids, truth, 10), 4)]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times: dict[tuple[int, int], list[float]] = {g: [] for g in grid}
    for rnd in range(3):  # interleaved: load that comes and goes slows every setting alike
        for nprobe, depth in grid:
            set_nprobe(nprobe)
            two_stage = TwoStageIndex(index, store, depth)
            for row in queries[rnd * 100:(rnd + 1) * 100]:
                start = time.perf_counter()
                two_stage.search(row[None, :], 10)
                times[(nprobe, depth)].append((time.perf_counter() - start) * 1000)
    faiss.omp_set_num_threads(threads)
    for (nprobe, depth), ms in times.items():
        out[f"{nprobe}/{depth}"].append(round(float(np.percentile(ms, 50)), 3))
    return out


def main() -> None:
    from clip_index.index.rerank import RERANK_FILE, RerankStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True, help="a bench.index.twostage folder, built")
    parser.add_argument("--variants", required=True, help="'key|train vectors|iterations;...'")
    parser.add_argument("--grid", default=GRID, help="nprobe/depth pairs to measure")
    args = parser.parse_args()
    folder = Path(args.folder)
    store = RerankStore(str(folder / "faiss" / RERANK_FILE))
    queries, truth = np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
    grid = [(int(a), int(b)) for a, b in (g.split("/") for g in args.grid.split(","))]
    for variant in args.variants.split(";"):
        key, train_n, niter = variant.split("|")
        index, times = build(store, key, int(train_n), int(niter))
        row = {"key": key, "train_vectors": int(train_n), "iterations": int(niter), **times,
               **measure(index, store, queries, truth, grid)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
