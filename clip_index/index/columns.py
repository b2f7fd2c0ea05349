"""Column store: the metadata that filtered search reads per row (image size, DataComp's
caption-similarity scores, face count, the changed-image flag), one small ``.npy`` per column in
``output_dir/faiss/`` (row i = faiss id i), memory-mapped at query time.

Why not the id mapping or data/: a filter is evaluated over every row once (then cached as a
bitmap), so it wants a few bytes per row in a flat array: 10 bytes per row for every column
(12.8M rows → 128 MB of file, of which a filter touches only the columns it names), against
data/'s embeddings and strings. Columns the data lacks are simply not written; a filter on one
of them is refused, naming what the folder has.

Values are stored compactly, with a sentinel for "unknown" (a failed parse, a dataset without
that column): sizes as uint16 (0 = unknown; larger sizes clipped to 65,535), scores as float16
(NaN = unknown), face counts as uint8 (255 = unknown; more than 254 faces count as 254), the
changed flag as uint8 (0 = unchanged, 1 = changed, 255 = unknown).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema

log = logging.getLogger(__name__)

COLUMNS_FILE = "columns.json"  # in output_dir/faiss/: the stored columns, their types, rows
COLUMN_PREFIX = "column-"  # faiss/column-NAME.npy


@dataclass(frozen=True)
class ColumnSpec:
    """A stored column: its `name`, the data/ columns it is read from (the first present
    wins), its numpy `dtype` and its `unknown` value."""

    name: str
    sources: tuple[str, ...]
    dtype: str
    unknown: float
    about: str


# width/height: the downloaded image's real size (the download step's original_width), else
# the size the source recorded at crawl time (source_original_width, DataComp's own column)
SPECS = (
    ColumnSpec("width", (schema.ORIGINAL_WIDTH, schema.SOURCE_PREFIX + schema.ORIGINAL_WIDTH),
               "uint16", 0, "image width, pixels (0 = unknown)"),
    ColumnSpec("height", (schema.ORIGINAL_HEIGHT,
                          schema.SOURCE_PREFIX + schema.ORIGINAL_HEIGHT),
               "uint16", 0, "image height, pixels (0 = unknown)"),
    ColumnSpec("clip_b32_similarity_score", ("clip_b32_similarity_score",), "float16",
               float("nan"), "DataComp's caption-image cosine, OpenAI ViT-B/32 (NaN = unknown)"),
    ColumnSpec("clip_l14_similarity_score", ("clip_l14_similarity_score",), "float16",
               float("nan"), "DataComp's caption-image cosine, OpenAI ViT-L/14 (NaN = unknown)"),
    ColumnSpec(schema.FACE_COUNT, (schema.FACE_COUNT,), "uint8", 255,
               "faces DataComp detected (255 = unknown)"),
    ColumnSpec(schema.IMAGE_CHANGED, (schema.IMAGE_CHANGED,), "uint8", 255,
               "1 = the image's sha256 differs from the source's (255 = unknown)"),
)
BY_NAME = {spec.name: spec for spec in SPECS}


def column_file(name: str) -> str:
    return f"{COLUMN_PREFIX}{name}.npy"


def _convert(spec: ColumnSpec, values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """One shard's values as the stored dtype, unknowns (nulls) as the sentinel."""
    if spec.dtype == "float16":
        floats = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        return np.asarray(floats, dtype=np.float64).astype(np.float16)  # nulls → NaN
    if spec.name == schema.IMAGE_CHANGED:
        flags = pc.cast(values, pa.uint8())
        return np.asarray(pc.fill_null(flags, int(spec.unknown)).to_numpy(zero_copy_only=False),
                          dtype=np.uint8)
    top = np.iinfo(spec.dtype).max - (1 if spec.name == schema.FACE_COUNT else 0)
    ints = np.asarray(pc.fill_null(pc.cast(values, pa.int64()), -1)
                      .to_numpy(zero_copy_only=False), dtype=np.int64)
    out = np.clip(ints, 0, top).astype(spec.dtype)
    out[ints < 0] = int(spec.unknown)
    return out


def build_column_store(output_dir: str, local_dir: str,
                       read_shard: Callable[[str, list[str]], pa.Table] | None = None,
                       ) -> tuple[list[str], dict[str, Any]]:
    """Read the metadata columns of ``output_dir/data/`` (shards in id order, as the index
    step stages them) and write ``column-NAME.npy`` + ``columns.json`` into `local_dir`.
    Returns (file names written, the index_infos entry). A dataset without any of these
    columns gets an empty store (filters then say which columns are missing)."""
    read = read_shard or (lambda path, cols: io.read_parquet(path, columns=cols))
    parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in SPECS}
    found: dict[str, set[str]] = {spec.name: set() for spec in SPECS}
    rows = 0
    for path in io.list_shards(io.join(output_dir, schema.DATA_DIR)):
        names = set(_schema_names(path))
        wanted = {spec.name: next((s for s in spec.sources if s in names), None)
                  for spec in SPECS}
        table = read(path, sorted({s for s in wanted.values() if s} | {schema.UID}))
        n = table.num_rows  # uid read too: a shard of no metadata still counts its rows
        for spec in SPECS:
            source = wanted[spec.name]
            if source is None:
                parts[spec.name].append(np.full(n, spec.unknown, dtype=spec.dtype))
            else:
                found[spec.name].add(source)
                parts[spec.name].append(_convert(spec, table.column(source)))
        rows += n
    written: list[str] = []
    info: dict[str, Any] = {"rows": rows, "columns": {}}
    for spec in SPECS:
        if not found[spec.name]:
            continue
        values = np.concatenate(parts[spec.name]) if parts[spec.name] else \
            np.empty(0, spec.dtype)
        np.save(os.path.join(local_dir, column_file(spec.name)), values)
        written.append(column_file(spec.name))
        info["columns"][spec.name] = {"dtype": spec.dtype, "unknown": _json_number(spec.unknown),
                                      "from": sorted(found[spec.name]), "about": spec.about,
                                      "unknown_rows": int(_unknown(spec, values).sum())}
    io.write_json(os.path.join(local_dir, COLUMNS_FILE), info)
    written.append(COLUMNS_FILE)
    log.info("index: column store of %d rows: %s", rows, sorted(info["columns"]) or "none "
             "(data/ has no metadata columns)")
    return written, info


def write_column_store(output_dir: str) -> dict[str, Any]:
    """Build the column store and copy it into ``output_dir/faiss/``; the index_infos entry."""
    with tempfile.TemporaryDirectory(prefix="clip-index-columns-") as tmp:
        names, info = build_column_store(output_dir, tmp)
        io.makedirs(io.join(output_dir, schema.FAISS_DIR))
        for name in names:
            fs, remote = io.filesystem(io.join(output_dir, schema.FAISS_DIR, name))
            fs.put_file(os.path.join(tmp, name), remote)
    return info


def remove_column_store(output_dir: str) -> None:
    """Delete an earlier build's column files (stale columns must not outlive their index)."""
    folder = io.join(output_dir, schema.FAISS_DIR)
    if not io.exists(folder):
        return
    fs, path = io.filesystem(folder)
    for entry in fs.ls(path, detail=False):
        base = os.path.basename(entry)
        if base == COLUMNS_FILE or (base.startswith(COLUMN_PREFIX) and base.endswith(".npy")):
            fs.rm(entry)


def _unknown(spec: ColumnSpec, values: np.ndarray) -> np.ndarray:
    if np.isnan(spec.unknown):
        return np.isnan(values)
    return values == spec.unknown


def _json_number(x: float) -> float | int | str:
    return "nan" if np.isnan(x) else int(x)


def _schema_names(path: str) -> list[str]:
    import pyarrow.parquet as pq

    fs, fs_path = io.filesystem(path)
    with fs.open(fs_path, "rb") as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


class ColumnStore:
    """The stored columns of an index's faiss/ folder (local: memory-mapped; remote: copied
    to a local temporary file first, as faiss's files are); an index built without them (or
    the reference layout) has an empty store."""

    def __init__(self, folder: str, rows: int) -> None:
        self.folder = folder
        self.rows = rows
        self.arrays: dict[str, np.ndarray] = {}
        path = io.join(folder, COLUMNS_FILE)
        self.info: dict[str, Any] = io.read_json(path) if io.exists(path) else \
            {"rows": rows, "columns": {}}
        for name in self.info["columns"]:
            if name not in BY_NAME:
                log.warning("column store %s: unknown column %r ignored", folder, name)
                continue
            array = np.load(io.local_path(io.join(folder, column_file(name))), mmap_mode="r")
            if len(array) != rows or array.dtype != np.dtype(BY_NAME[name].dtype):
                raise ValueError(f"column {name!r} in {folder} holds {len(array)} "
                                 f"{array.dtype} values: expected {rows} "
                                 f"{BY_NAME[name].dtype} (one per vector); the files come "
                                 "from different builds")
            self.arrays[name] = array

    @property
    def names(self) -> list[str]:
        return sorted(self.arrays)

    def __contains__(self, name: object) -> bool:
        return name in self.arrays

    def column(self, name: str) -> np.ndarray:
        """The stored values of `name` (memory-mapped); KeyError naming what exists."""
        if name not in self.arrays:
            raise KeyError(f"column {name!r} is not in this index's column store: it has "
                           f"{self.names or 'none'}")
        return self.arrays[name]

    def known(self, name: str) -> np.ndarray:
        """True where `name` holds a value (not its unknown sentinel)."""
        return ~_unknown(BY_NAME[name], self.column(name))
