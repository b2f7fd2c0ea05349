"""Build small published clip-index folders for tests without downloading or embedding: data/
shards of given embeddings + manifest.json (as the write step makes them), then the real index
step (autofaiss + faiss)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clip_index import io, schema


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
