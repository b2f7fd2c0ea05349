"""A tiny published index whose manifest names `tiny-clip` with random weights (seed 0): text
and image queries run the real open_clip model, vectors are random or given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from tests.support.index_builder import random_unit, write_output_dir

TINY_DIM = 64  # tiny-clip's embed_dim


def build_tiny_index(out: Path, n: int = 120, vectors: np.ndarray | None = None,
                     urls: list[str] | None = None, index_key: str = "Flat") -> np.ndarray:
    vectors = random_unit(n, TINY_DIM, seed=11) if vectors is None else vectors
    n = len(vectors)
    write_output_dir(out, vectors, [f"img-{i:03d}" for i in range(n)],
                     [list(range(0, n // 2)), list(range(n // 2, n))], urls=urls,
                     captions=[f"picture number {i}" for i in range(n)])
    run_index(str(out), IndexConfig(index_key=index_key, recall_queries=20))
    return vectors
