"""Index folder layouts: recognise a clip-index output folder or the reference's published layout
(Fondant's ``fondant-ai/datacomp-small-clip``) and say where its index, id mapping and model are.

clip-index: ``manifest.json`` (model, pretrained, dim, normalised), ``index_infos.json``,
``faiss/knn.index``, ``id_mapping/part-NNNNN.parquet`` (i, uid, url, caption) and the same rows
as ``faiss/id_mapping.arrow`` (memory-mapped by readers; folders written before it existed are
read from the parquet); a two-stage index (``"two_stage": true`` in index_infos.json) adds
``faiss/rerank_vectors.index``, the stored vectors its candidates are re-ranked against (a faiss
file, memory-mapped).

reference: a file named ``faiss`` at the root (autofaiss, inner product), ``id_mapping/`` parquet
with ``i`` (the faiss id; positional when absent) and ``url`` (``image_path`` in older copies),
``data/`` parquet with ``url`` and an embedding that was *not* L2-normalised. It has no manifest:
its model is known (laion/CLIP-ViT-B-32-laion2B-s34B-b79K = open_clip ``ViT-B-32`` /
``laion2b_s34b_b79k``), and because the stored vectors keep their norms, inner products are not
cosines: `ClipIndex` rescores its candidates by the norm of each stored vector.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema
from clip_index.index.rerank import RERANK_FILE

log = logging.getLogger(__name__)

CLIP_INDEX = "clip-index"
REFERENCE = "reference"
REFERENCE_HUB_ID = "fondant-ai/datacomp-small-clip"
REFERENCE_MODEL = "ViT-B-32"
REFERENCE_PRETRAINED = "laion2b_s34b_b79k"
REFERENCE_INDEX_FILE = "faiss"
REFERENCE_URL_COLUMNS = ("url", "image_path")

EXPECTED = (
    "expected a clip-index output folder (manifest.json, index_infos.json, faiss/knn.index, "
    "id_mapping/, as written by `clip-index run`) or the reference's published layout "
    f"({REFERENCE_HUB_ID}: a `faiss` index file at the root and id_mapping/ parquet with "
    "columns i and url)"
)


@dataclass(frozen=True)
class Layout:
    """What a folder holds and how to read it."""

    kind: str
    root: str
    index_path: str
    mapping_dir: str
    model: str
    pretrained: str
    normalised: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    infos: dict[str, Any] = field(default_factory=dict)
    rerank_path: str = ""  # a two-stage index's re-rank vectors ("" = single stage)
    mapping_file: str = ""  # the id mapping as a memory-mappable Arrow file ("" = parquet only)

    def describe(self) -> str:
        """One line for logs and the CLI: the layout, the model, and how scores are made."""
        if self.kind == CLIP_INDEX:
            return (f"clip-index layout in {self.root}: model {self.model} ({self.pretrained}), "
                    "L2-normalised vectors, scores are cosine similarities")
        return (f"reference layout ({REFERENCE_HUB_ID}) in {self.root}: no manifest, model "
                f"{self.model} ({self.pretrained}) assumed; stored vectors are not normalised, "
                "so queries are normalised and candidates rescored by stored-vector norm "
                "(scores are cosine similarities)")


def detect_layout(folder: str) -> Layout:
    """The layout of `folder`; FileNotFoundError naming what was found when it is neither."""
    if io.exists(io.join(folder, schema.MANIFEST)):
        mapping_file = io.join(folder, schema.FAISS_DIR, schema.MAPPING_FILE)
        # the id mapping: id_mapping/ or its Arrow copy (hf:// fetches only the copy)
        missing = [name for name in (schema.INDEX_INFOS,
                                     posixpath.join(schema.FAISS_DIR, schema.INDEX_FILE),
                                     schema.ID_MAPPING_DIR)
                   if not io.exists(io.join(folder, name)) and not (
                       name == schema.ID_MAPPING_DIR and io.exists(mapping_file))]
        if missing:
            raise FileNotFoundError(f"{folder!r} has a manifest.json but no {', '.join(missing)}:"
                                    f" the index step has not run or did not finish; {EXPECTED}")
        manifest = io.read_json(io.join(folder, schema.MANIFEST))
        for key in ("model", "pretrained"):
            if key not in manifest:
                raise ValueError(f"{folder}/manifest.json has no {key!r}: {EXPECTED}")
        infos = io.read_json(io.join(folder, schema.INDEX_INFOS))
        for key in ("model", "pretrained"):
            if key in infos and str(infos[key]) != str(manifest[key]):
                raise ValueError(
                    f"{folder}: the index was built from {key} {infos[key]!r} embeddings but "
                    f"manifest.json names {manifest[key]!r}: the data were re-embedded with "
                    "another model after the index was built; rebuild it (`clip-index index`)")
        rerank = ""
        if infos.get("two_stage"):
            rerank = io.join(folder, schema.FAISS_DIR, RERANK_FILE)
            if not io.exists(rerank):
                raise FileNotFoundError(
                    f"{folder}: index_infos.json describes a two-stage index but "
                    f"{schema.FAISS_DIR}/{RERANK_FILE} (its re-rank vectors) is missing; copy "
                    f"or publish the whole {schema.FAISS_DIR}/ folder")
        return Layout(
            kind=CLIP_INDEX, root=folder,
            index_path=io.join(folder, schema.FAISS_DIR, schema.INDEX_FILE),
            mapping_dir=io.join(folder, schema.ID_MAPPING_DIR),
            model=str(manifest["model"]), pretrained=str(manifest["pretrained"]),
            normalised=bool(manifest.get("normalised", True)), manifest=manifest,
            infos=infos, rerank_path=rerank,
            mapping_file=mapping_file if io.exists(mapping_file) else "",
        )
    fs, fs_path = io.filesystem(io.join(folder, REFERENCE_INDEX_FILE))
    if fs.isfile(fs_path) and io.exists(io.join(folder, schema.ID_MAPPING_DIR)):
        manifest = {"model": REFERENCE_MODEL, "pretrained": REFERENCE_PRETRAINED, "seed": 0,
                    "normalised": False, "layout": REFERENCE}
        return Layout(kind=REFERENCE, root=folder,
                      index_path=io.join(folder, REFERENCE_INDEX_FILE),
                      mapping_dir=io.join(folder, schema.ID_MAPPING_DIR),
                      model=REFERENCE_MODEL, pretrained=REFERENCE_PRETRAINED, normalised=False,
                      manifest=manifest)
    found = _listing(folder)
    raise FileNotFoundError(f"{folder!r} is not an index folder (it holds {found}); {EXPECTED}")


def _listing(folder: str) -> str:
    fs, fs_path = io.filesystem(folder)
    if not fs.exists(fs_path):
        return "nothing: it does not exist"
    names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(fs_path, detail=False))
    return ", ".join(names[:12]) + (" …" if len(names) > 12 else "") if names else "no files"


class IdMapping:
    """The id mapping (faiss id → uid, url, caption), in memory or memory-mapped, read by id.

    Rows are read value by value from the chunk that holds them (the memory-mapped file has
    one record batch per shard), string values straight from the Arrow buffers (offsets,
    bytes, validity) rather than through a pyarrow scalar each: ~20% less per query (10
    rows: 47 against 58 µs warm, `python -m bench.index.query_parts`; ~80 against ~105 on
    rows not read before), where pyarrow's ``Table.take`` over 100 chunks takes 22 ms.
    Hand-written because pyarrow has no cheap "these few rows as Python values" call.
    """

    COLUMNS = (schema.UID, schema.URL, schema.CAPTION)

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        batches = table.select(list(self.COLUMNS)).to_batches()
        self.chunks = [[_string_buffers(batch.column(j)) for j in range(len(self.COLUMNS))]
                       for batch in batches]
        self.offsets = np.cumsum([0] + [b.num_rows for b in batches])

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    def rows(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """uid, url and caption of each faiss id in `ids`, in the order given."""
        ids = np.asarray(ids, dtype=np.int64)
        wanted = ids.tolist()  # Python ints: min/max of ten ids without numpy's per-call cost
        if wanted and (min(wanted) < 0 or max(wanted) >= self.num_rows):
            raise IndexError(f"faiss ids {wanted[:5]}…: expected ids in "
                             f"0..{self.num_rows - 1}")
        chunk = np.searchsorted(self.offsets, ids, side="right") - 1
        out = []
        for c, i in zip(chunk.tolist(), (ids - self.offsets[chunk]).tolist()):
            row = {}
            for name, (array, offsets, data, valid, bit) in zip(self.COLUMNS, self.chunks[c]):
                if offsets is None:  # not a string array (the reference's null columns)
                    row[name] = array[i].as_py()
                elif valid is not None and not (valid[(bit + i) >> 3] >> ((bit + i) & 7)) & 1:
                    row[name] = None
                else:
                    row[name] = str(data[offsets[i]:offsets[i + 1]], "utf-8")
            out.append(row)
        return out


def _string_buffers(array: pa.Array) -> tuple[Any, ...]:
    """(array, offsets, data, validity, bit offset) of one chunk of a string column, as
    memoryviews of its buffers (value i is data[offsets[i]:offsets[i + 1]]; validity None when
    the chunk has no nulls; memoryviews index to Python ints, several times cheaper than numpy
    scalars); offsets None for other types, which are read through pyarrow scalars."""
    if array.type not in (pa.string(), pa.large_string()):
        return array, None, None, None, 0
    validity, offsets, data = array.buffers()
    view = memoryview(offsets).cast("i" if array.type == pa.string() else "q")
    return (array, view[array.offset:array.offset + len(array) + 1],
            memoryview(data) if data is not None else memoryview(b""),
            memoryview(validity) if validity is not None and array.null_count else None,
            array.offset)


def map_mapping_file(path: str) -> pa.Table:
    """The memory-mapped id mapping the index step writes (`stage_vectors`): no row is read
    until it is used, so an opened index holds none of it in private memory (a query touches
    the pages of its k rows). Checks the schema and that each batch starts and ends at the
    faiss ids of its place (two values per batch, not a pass over the file)."""
    try:
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"id mapping {path!r} cannot be read ({exc}): expected the Arrow file "
                         "the index step writes; rebuild the index or delete the file to read "
                         f"{schema.ID_MAPPING_DIR}/ instead") from exc
    if not table.schema.equals(schema.ID_MAPPING_SCHEMA):
        raise ValueError(f"id mapping {path!r} has columns {table.schema.names}: expected "
                         f"{schema.ID_MAPPING_SCHEMA.names}")
    offset = 0
    for chunk in table.column(schema.FAISS_ID).chunks:
        if len(chunk) and (chunk[0].as_py(), chunk[-1].as_py()) != (offset,
                                                                    offset + len(chunk) - 1):
            raise RuntimeError(f"id mapping {path!r} is not faiss ids 0..{table.num_rows - 1} "
                               f"in order (rows {offset}..{offset + len(chunk) - 1} hold ids "
                               f"{chunk[0].as_py()}..{chunk[-1].as_py()})")
        offset += len(chunk)
    return table


def read_mapping(layout: Layout) -> pa.Table:
    """The id mapping as one table in faiss id order, columns i, uid, url, caption (uid and
    caption null for the reference layout, which has neither): memory-mapped from
    ``faiss/id_mapping.arrow`` when the folder has it, else read from the parquet."""
    if layout.mapping_file:
        return map_mapping_file(io.local_path(layout.mapping_file))
    if layout.kind == CLIP_INDEX:
        tables = [io.read_parquet(p) for p in io.list_shards(layout.mapping_dir)]
    else:
        fs, fs_dir = io.filesystem(layout.mapping_dir)
        files = sorted(p for p in fs.find(fs_dir) if p.endswith(".parquet"))
        tables = [_reference_mapping(io.read_parquet(io.join(layout.mapping_dir,
                                                             posixpath.relpath(p, fs_dir))))
                  for p in files]
    if not tables:
        return schema.ID_MAPPING_SCHEMA.empty_table()
    table = pa.concat_tables(tables)  # chunks kept: IdMapping reads by chunk, no copy
    if layout.kind == REFERENCE and table.column(schema.FAISS_ID).null_count == 0:
        table = table.sort_by(schema.FAISS_ID)  # the reference's files need not be in id order
    ids = table.column(schema.FAISS_ID)
    if ids.null_count:  # no `i` column: faiss id = row position, as the reference's code reads it
        table = table.set_column(0, schema.FAISS_ID, pa.array(np.arange(table.num_rows),
                                                              pa.int64()))
    elif not np.array_equal(ids.to_numpy(), np.arange(table.num_rows)):
        raise RuntimeError(f"id mapping in {layout.mapping_dir} is not faiss ids "
                           f"0..{table.num_rows - 1} (one row per id)")
    return table


def _reference_mapping(table: pa.Table) -> pa.Table:
    url_column = next((c for c in REFERENCE_URL_COLUMNS if c in table.column_names), None)
    if url_column is None:
        raise ValueError(f"reference id_mapping parquet has columns {table.column_names}: "
                         f"expected {schema.FAISS_ID!r} and one of {REFERENCE_URL_COLUMNS}")
    n = table.num_rows
    ids = (pc.cast(table.column(schema.FAISS_ID), pa.int64())
           if schema.FAISS_ID in table.column_names else pa.nulls(n, pa.int64()))
    return pa.table({schema.FAISS_ID: ids, schema.UID: pa.nulls(n, pa.string()),
                     schema.URL: pc.cast(table.column(url_column), pa.string()),
                     schema.CAPTION: pa.nulls(n, pa.string())})
