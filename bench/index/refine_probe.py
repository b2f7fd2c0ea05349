"""bench/index/refine_probe: would the re-rank in C++ bring one query through `ClipIndex` under
1 ms? Copies a built two-stage folder's float16 re-rank vectors into a faiss
`IndexScalarQuantizer` (QT_fp16, the same bytes per row) read back memory-mapped
(`IO_FLAG_MMAP_IFC`), and answers the folder's held-out queries through `ClipIndex` with
faiss's `IndexRefine` (first stage + exact fp16 re-rank in one C++ call) in place of the
Python re-rank, at the folder's tuned nprobe and re-rank depth.

    PYTHONPATH=. python -m bench.index.refine_probe bench/.work/index-twostage/clustered-1000000x512

A probe for the next step of the two-stage index (BENCHMARKS.md), not the shipped path: it
writes a second copy of the vectors (1 GB per 1M × 512) into ``bench/.work/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

WORK = Path(__file__).resolve().parents[1] / ".work"


def sq_copy(folder: Path) -> Path:
    """The re-rank vectors as a faiss fp16 scalar-quantizer index file (made once)."""
    import faiss

    path = WORK / f"refine-{folder.name}.index"
    if path.exists():
        return path
    vectors = np.load(folder / "faiss" / "rerank_vectors.npy", mmap_mode="r")
    sq = faiss.IndexScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_fp16,
                                    faiss.METRIC_INNER_PRODUCT)
    for start in range(0, len(vectors), 100_000):
        sq.add(np.asarray(vectors[start:start + 100_000], dtype=np.float32))
    WORK.mkdir(parents=True, exist_ok=True)
    faiss.write_index(sq, str(path))
    return path


def main() -> None:
    import faiss

    from clip_index.index.tune import recall_at
    from clip_index.search.searcher import ClipIndex

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a built bench.index.twostage folder")
    args = parser.parse_args()
    index = ClipIndex(args.folder, threads=1)
    refine = faiss.read_index(str(sq_copy(args.folder)), faiss.IO_FLAG_MMAP_IFC)
    both = faiss.IndexRefine(index.index, refine)
    both.k_factor = float(index.infos["rerank_depth"]) / 10

    class Refined:
        def search(self, x: np.ndarray, k: int) -> Any:
            return both.search(x, k)

    queries = np.load(args.folder / "queries.npy")
    truth = np.load(args.folder / "truth.npy")
    for name, searcher in (("Python re-rank (shipped)", index.searcher),
                           ("faiss IndexRefine, mmapped fp16", Refined())):
        index.searcher = searcher
        found = np.array([[r.id for r in row] for row in index.search_embedding(queries, 10)])
        for _ in range(2):
            times = []
            for row in queries[:300]:
                start = time.perf_counter()
                index.search_embedding(row, 10)
                times.append((time.perf_counter() - start) * 1000)
            print(f"{name}: recall@10 {recall_at(found, truth, 10):.4f}, "
                  f"p50 {np.percentile(times, 50):.3f} ms, p99 {np.percentile(times, 99):.3f} ms")


if __name__ == "__main__":
    main()
