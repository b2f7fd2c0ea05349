"""Staging the vectors for an index build: one pass over ``output_dir/data/`` in shard order that
hands each shard's normalised vectors to a sink and writes the id mapping rows beside them (faiss
id i is row i of the pass), and the copy of the finished query files into ``faiss/``. Both index
builds (`clip_index.index.build`, `clip_index.index.twostage`) use them."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from clip_index import io, schema
from clip_index.vectors import normalise

STAGED_NAME = "{:09d}.npy"  # fixed width: autofaiss reads the files in name order


def stage_vectors(output_dir: str, sink: Callable[[np.ndarray], None],
                  mapping_file: str) -> tuple[int, int]:
    """One pass over the data shards: hand each shard's normalised float32 vectors to `sink`,
    write ``output_dir/id_mapping/`` and the same rows to the local Arrow file `mapping_file`
    (one record batch per shard; see `clip_index.index.layout.map_mapping_file`); return
    (vectors, dim).

    Alignment by construction: the sink sees the shards in the order of this pass and mapping
    row i is written in the same step as vector i.
    """
    for stale in io.list_shards(io.join(output_dir, schema.ID_MAPPING_DIR)):
        fs, path = io.filesystem(stale)
        fs.rm(path)
    with pa.ipc.new_file(mapping_file, schema.ID_MAPPING_SCHEMA) as arrow_mapping:
        return _stage(output_dir, sink, arrow_mapping)


def _stage(output_dir: str, sink: Callable[[np.ndarray], None],
           arrow_mapping: pa.ipc.RecordBatchFileWriter) -> tuple[int, int]:
    offset, dim = 0, 0
    for path in io.list_shards(io.join(output_dir, schema.DATA_DIR)):
        shard = io.shard_number(path)
        table = io.read_parquet(path)
        if table.num_rows == 0:
            continue
        vectors = embeddings_array(table)
        if dim and vectors.shape[1] != dim:
            raise RuntimeError(f"{path}: embeddings of dim {vectors.shape[1]}, earlier shards "
                               f"have dim {dim}: one index needs one model")
        dim = vectors.shape[1]
        sink(normalise(vectors))
        mapping = pa.table({
            schema.FAISS_ID: pa.array(np.arange(offset, offset + table.num_rows), pa.int64()),
            schema.UID: table.column(schema.UID),
            schema.URL: table.column(schema.URL),
            schema.CAPTION: table.column(schema.CAPTION),
        }, schema=schema.ID_MAPPING_SCHEMA)
        io.write_parquet_atomic(io.join(output_dir, schema.ID_MAPPING_DIR, io.shard_name(shard)),
                                mapping)
        arrow_mapping.write_table(mapping)
        offset += table.num_rows
    return offset, dim


def npy_folder_sink(staging: str) -> Callable[[np.ndarray], None]:
    """A `stage_vectors` sink writing ``staging/NNNNNNNNN.npy`` numbered in the order of the
    pass (not by shard number: ``part-100000`` sorts before ``part-99999`` by name), the order
    autofaiss reads and adds them in."""
    seq = iter(range(10**9))

    def sink(vectors: np.ndarray) -> None:
        np.save(os.path.join(staging, STAGED_NAME.format(next(seq))), vectors)

    return sink


def embeddings_array(table: pa.Table) -> np.ndarray:
    """The `embedding` column as a float32 (rows, dim) array (float16 storage is widened)."""
    column = table.column(schema.EMBEDDING).combine_chunks()
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, dim), dtype=np.float32)


def publish_query_files(output_dir: str, local_dir: str, names: list[str]) -> None:
    """Copy `names` (files of `local_dir`) into ``output_dir/faiss/``, ``knn.index`` last: its
    presence marks the set complete (a killed copy leaves no index beside stale companions)."""
    io.makedirs(io.join(output_dir, schema.FAISS_DIR))
    for name in sorted(names, key=lambda name: name == schema.INDEX_FILE):
        fs, remote = io.filesystem(io.join(output_dir, schema.FAISS_DIR, name))
        fs.put_file(os.path.join(local_dir, name), remote)
