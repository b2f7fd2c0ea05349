"""What float16 embedding storage (`--dtype float16`) does to search quality and disk.

    python -m bench.embed.fp16_recall [--n 100000] [--real PARQUET]

The same index is built twice, from float32 vectors and from the same vectors stored as float16
(widened back to float32, as the index step reads them); both are scored against the exact
float32 top-10 of held-out queries (recall@10). Data: a CLIP-like synthetic set (many clusters
in a low-dimensional subspace, a shared offset, L2-normalised: real CLIP embeddings are far
from isotropic noise, whose recall says little about theirs) and, when given, real embeddings
from an embed shard. Also the parquet size of the embedding column, zstd-compressed, per dtype.
Prints a Markdown fragment.
"""

from __future__ import annotations

import argparse
import io as _io
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clip_index import schema

KEYS = ["Flat", "HNSW32", "IVF1024,PQ64x8"]


def clip_like(n: int, dim: int = 512, clusters: int = 2000, rank: int = 64,
              seed: int = 0) -> np.ndarray:
    """`n` unit vectors: cluster centres in a `rank`-dim subspace plus a shared offset (CLIP
    embeddings of unrelated images still have cosine ~0.5), spread within clusters, a little
    isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T  # (rank, dim), orthonormal rows
    centres = rng.normal(size=(clusters, rank))
    labels = rng.integers(0, clusters, n)
    within = centres[labels] + 0.6 * rng.normal(size=(n, rank))
    offset = rng.normal(size=dim)
    x = within @ basis / np.sqrt(rank) + 0.7 * offset / np.linalg.norm(offset)
    x += 0.02 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))


def column_bytes(vectors: np.ndarray, dtype: str) -> int:
    """Size of an embeddings parquet holding `vectors` as `dtype` (zstd, as the steps write)."""
    arr = vectors.astype(dtype)
    values = pa.array(arr.reshape(-1), pa.float16() if dtype == "float16" else pa.float32())
    table = pa.table({schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(values,
                                                                           arr.shape[1])})
    buf = _io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.tell()


def compare(name: str, data: np.ndarray, queries: np.ndarray, k: int = 10) -> list[str]:
    import faiss

    half = data.astype(np.float16).astype(np.float32)
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    _, truth = exact.search(queries, k)
    rows = []
    for key in KEYS:
        if key.startswith("IVF") and len(data) < 40 * 1024:
            continue  # too few vectors to train 1024 lists
        recalls = []
        for vectors in (data, half):
            index = faiss.index_factory(data.shape[1], key, faiss.METRIC_INNER_PRODUCT)
            start = time.monotonic()
            index.train(data[:50_000] if vectors is data else half[:50_000])
            index.add(vectors)
            if key.startswith("IVF"):
                faiss.ParameterSpace().set_index_parameters(index, "nprobe=32")
            _, got = index.search(queries, k)
            recalls.append(recall_at(got, truth))
            build = time.monotonic() - start
        rows.append(f"| {name} | {len(data):,} × {data.shape[1]} | {key} | {recalls[0]:.4f} | "
                    f"{recalls[1]:.4f} | {recalls[1] - recalls[0]:+.4f} | {build:.0f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--real", type=Path, help="an embed shard (part-NNNNN.parquet)")
    args = parser.parse_args()
    synthetic = clip_like(args.n + args.queries)
    lines = ["| data | vectors | index | recall@10, float32 storage | float16 storage | "
             "change | build (one) |", "|---|---|---|---|---|---|---|"]
    lines += compare("CLIP-like synthetic", synthetic[args.queries:], synthetic[:args.queries])
    if args.real:
        table = pq.read_table(args.real)
        table = table.filter(pc.is_valid(table.column(schema.EMBEDDING)))
        real = np.asarray(table.column(schema.EMBEDDING).to_pylist(), dtype=np.float32)
        q = min(len(real) // 5, args.queries)
        lines += compare(f"real ({args.real.name})", real[q:], real[:q])
    fp32, fp16 = column_bytes(synthetic, "float32"), column_bytes(synthetic, "float16")
    lines += ["", f"Embedding parquet (zstd), {len(synthetic):,} × 512: float32 "
              f"{fp32 / 1e6:.1f} MB, float16 {fp16 / 1e6:.1f} MB ({fp16 / fp32:.0%})."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
