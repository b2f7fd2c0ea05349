"""Every output folder the tests build, without downloading or embedding (the whole pipeline over
HTTP is tests/support/sample_output.py):

- `write_output_dir`: data/ shards of given embeddings + manifest.json, as the write step makes
  them (then run the index step, or call `build_tiny_index`, which does);
- `build_tiny_index`: that, indexed, named as the bundled tiny-clip, so queries run the model;
- `make_output_dir`: synthetic embed-step shards through the real write and index steps;
- `make_reference_dir`: the reference's published layout (fondant-ai/datacomp-small-clip) with a
  real faiss index over unnormalised vectors;

and the vectors they hold: `random_unit` (isotropic) and `clustered_vectors` (CLIP-like)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.stats import ShardStats
from clip_index.units import UnitRecord

FAILURES = (("failed_to_download", "http_404: Not Found"),
            ("failed_to_decode", "decode: cannot identify image file"))


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 8,
                      noise: float = 0.3) -> np.ndarray:
    """CLIP-like structure: points around a few centres, L2-normalised, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))
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


def write_output_dir(output_dir: Path, embeddings: np.ndarray, uids: list[str],
                     shards: list[list[int]] | None = None, model: str = "tiny-clip",
                     pretrained: str = "none", urls: list[str] | None = None,
                     captions: list[str] | None = None, shard_numbers: list[int] | None = None,
                     extra: dict[str, pa.Array] | None = None) -> None:
    """data/part-NNNNN.parquet (rows `shards[j]` in shard `shard_numbers[j]`) + manifest.json;
    `extra`: metadata columns (one value per row of `embeddings`) after the data schema's, as
    the write step carries them from the download step (width, original_width, ...)."""
    n, dim = embeddings.shape
    shards = shards or [list(range(n))]
    shard_numbers = shard_numbers or list(range(len(shards)))
    urls = urls or [f"http://127.0.0.1:9/img/{u}.jpg" for u in uids]
    captions = captions or [f"caption of {u}" for u in uids]
    data_schema = schema.data_schema(dim)
    for number, rows in zip(shard_numbers, shards):
        table = pa.table({
            schema.UID: [uids[i] for i in rows], schema.URL: [urls[i] for i in rows],
            schema.CAPTION: [captions[i] for i in rows],
            schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(
                pa.array(embeddings[rows].reshape(-1), pa.float32()), dim),
        }, schema=data_schema)
        for name, values in (extra or {}).items():
            table = table.append_column(name, values.take(pa.array(rows, pa.int64())))
        io.write_parquet_atomic(str(output_dir / schema.DATA_DIR / io.shard_name(number)), table)
    manifest: dict[str, Any] = {
        "model": model, "pretrained": pretrained, "dim": dim, "dtype": "float32",
        "normalised": True, "seed": 0, "shards": shard_numbers,
        "totals": {"rows": n, "successes": n, "failures": 0, "success_rate": 1.0,
                   "statuses": {"success": n}, "errors": {}},
    }
    io.write_json(str(output_dir / schema.MANIFEST), manifest)


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TINY_DIM = 64  # tiny-clip's embed_dim


def build_tiny_index(out: Path, n: int = 120, vectors: np.ndarray | None = None,
                     urls: list[str] | None = None, index_key: str = "Flat") -> np.ndarray:
    """`write_output_dir` + the real index step, the manifest naming `tiny-clip` with random
    weights (seed 0), so text and image queries run the real open_clip model; returns the
    vectors (random unless given)."""
    from clip_index.config import IndexConfig
    from clip_index.index.build import run_index

    vectors = random_unit(n, TINY_DIM, seed=11) if vectors is None else vectors
    n = len(vectors)
    write_output_dir(out, vectors, [f"img-{i:03d}" for i in range(n)],
                     [list(range(0, n // 2)), list(range(n // 2, n))], urls=urls,
                     captions=[f"picture number {i}" for i in range(n)])
    run_index(str(out), IndexConfig(index_key=index_key, recall_queries=20))
    return vectors
