"""Index folders for tests: a clip-index output folder made by the real write and index steps
from synthetic embedding shards, and a folder in the reference's published layout
(fondant-ai/datacomp-small-clip) with a real faiss index over unnormalised vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.stats import ShardStats
from clip_index.units import UnitRecord

FAILURES = (("failed_to_download", "http_404: Not Found"),
            ("failed_to_decode", "decode: cannot identify image file"))


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 8) -> np.ndarray:
    """CLIP-like structure: points around a few centres, L2-normalised, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_embedding_shards(folder: Path, rows_per_shard: int = 60, shards: int = 2,
                          dim: int = 64, model: str = "tiny-clip",
                          pretrained: str = "none") -> Path:
    """Embed-step output: part-NNNNN.parquet (every row, with status) + stats with the model +
    unit.json; two rows of every shard failed (one not downloaded, one not decodable)."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = clustered_vectors(rows_per_shard * shards, dim)
    model_info = {"model": model, "pretrained": pretrained, "dim": dim, "seed": 0,
                  "dtype": "float32", "normalised": True}
    for shard in range(shards):
        stats = ShardStats(shard=shard)
        rows = []
        for j in range(rows_per_shard):
            n = shard * rows_per_shard + j
            status, error = FAILURES[j] if j < len(FAILURES) else ("success", None)
            stats.count(status, error)
            rows.append({"uid": f"u{n:05d}", "url": f"http://127.0.0.1/img/{n}.jpg",
                         "caption": f"picture number {n}", "status": status, "error": error})
        out_schema = schema.embeddings_schema(dim)
        vector_type = out_schema.field(schema.EMBEDDING).type
        failed = pa.Table.from_pylist(rows[:len(FAILURES)])
        ok = pa.Table.from_pylist(rows[len(FAILURES):])
        start = shard * rows_per_shard + len(FAILURES)
        ok_vectors = vectors[start:(shard + 1) * rows_per_shard]
        # failures with null vectors, then the embedded rows
        table = pa.concat_tables([
            failed.append_column(schema.EMBEDDING, pa.nulls(failed.num_rows, vector_type))
            .cast(out_schema),
            ok.append_column(schema.EMBEDDING, pa.FixedSizeListArray.from_arrays(
                pa.array(ok_vectors.reshape(-1)), dim)).cast(out_schema),
        ])
        # as the embed step writes them (see io.AtomicParquetWriter on store_schema)
        pq.write_table(table, folder / io.shard_name(shard), store_schema=False)
        io.write_json(str(folder / io.stats_name(shard)), {**stats.as_dict(), "model": model_info})
    # what an embed task of a one-group run records: its shards are the whole dataset
    UnitRecord(list(range(shards)), list(range(shards))).write(str(folder))
    return folder


def make_output_dir(tmp: Path, **kwargs: int | str) -> Path:
    """A clip-index output folder built by the real write and index steps (Flat index)."""
    from clip_index.config import IndexConfig
    from clip_index.index.build import run_index
    from clip_index.index.write import run_write

    embeddings = make_embedding_shards(tmp / "embeddings", **kwargs)  # type: ignore[arg-type]
    output = tmp / "output"
    run_write([str(embeddings)], str(output))
    run_index(str(output), IndexConfig(index_key="Flat", recall_queries=20))
    return output


def make_reference_dir(folder: Path, n: int = 300, dim: int = 32, seed: int = 0,
                       index_key: str = "Flat", url_column: str = "url") -> np.ndarray:
    """The reference's published layout: `faiss` (inner product over *unnormalised* vectors,
    as Fondant built it), id_mapping/ (i, url) split over two files in shuffled order, data/
    (url, embedding). Returns the stored vectors (row = faiss id)."""
    import faiss

    rng = np.random.default_rng(seed)
    directions = clustered_vectors(n, dim, seed)
    norms = rng.uniform(0.5, 20.0, size=(n, 1)).astype(np.float32)  # CLIP norms vary a lot
    vectors = np.ascontiguousarray(directions * norms)
    index = faiss.index_factory(dim, index_key, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / "faiss"))
    urls = [f"http://127.0.0.1/ref/{i}.jpg" for i in range(n)]
    order = rng.permutation(n)
    (folder / "id_mapping").mkdir()
    for part, ids in enumerate(np.array_split(order, 2)):
        pq.write_table(pa.table({"i": pa.array(ids, pa.int64()),
                                 url_column: [urls[i] for i in ids]}),
                       folder / "id_mapping" / f"{part}.parquet")
    (folder / "data").mkdir()
    pq.write_table(pa.table({"url": urls, "embedding": pa.array(
        vectors.tolist(), pa.list_(pa.float32()))}), folder / "data" / "part.0.parquet")
    return vectors
