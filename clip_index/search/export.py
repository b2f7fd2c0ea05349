"""Export step: every image whose cosine with a prompt (text, image or embedding) is at least a
threshold, for many prompts in one exact scan of the stored vectors (`clip_index.search.scan`),
written as parquet rows with scores and metadata, a DataComp-style sorted uid subset (``.npy``)
and a JSON summary. clip-retrieval's `clip filter` does this with a range search of its
(approximate) index; DataComp's tooling takes the uid subset as it is.

Outputs in `output_dir`: ``matches.parquet`` (one row per prompt and match, or per matched image
with `union`), ``uids.npy`` (see `datacomp_uids`), ``summary.json``.
"""

from __future__ import annotations

import io as _io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema
from clip_index.search.export_config import ExportConfig
from clip_index.search.scan import Matches, open_vectors, scan
from clip_index.vectors import normalise

log = logging.getLogger(__name__)

MATCHES_FILE = "matches.parquet"
UIDS_FILE = "uids.npy"
SUMMARY_FILE = "summary.json"
PROMPT = "prompt"
PROMPT_INDEX = "prompt_index"
PROMPTS_MATCHED = "prompts"  # union rows: how many prompts the image matched
# DataComp's subset format: 128-bit uids as pairs of uint64 (high, low), sorted
DATACOMP_UID_DTYPE = np.dtype("u8,u8")
_HEX_UID = r"^[0-9a-fA-F]{32}$"


@dataclass(frozen=True)
class Prompts:
    """What to match: texts, image paths (local or fsspec) and/or embeddings ((n, dim) floats),
    scored in that order in one pass; `embedding_labels` name the embeddings in the output
    (default ``embedding-<i>``)."""

    texts: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    embeddings: np.ndarray | None = field(default=None, compare=False)
    embedding_labels: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.texts) + len(self.images) + (
            0 if self.embeddings is None else len(self.embeddings))

    def labels(self) -> list[str]:
        n = 0 if self.embeddings is None else len(self.embeddings)
        labels = list(self.embedding_labels) or [f"embedding-{i}" for i in range(n)]
        return [*self.texts, *self.images, *labels]

    def kinds(self) -> list[str]:
        n = len(self) - len(self.texts) - len(self.images)
        return ["text"] * len(self.texts) + ["image"] * len(self.images) + ["embedding"] * n


@dataclass(frozen=True)
class ExportResult:
    """What an export found and how fast: rows written, distinct images, the scan's rate."""

    prompts: int
    matches: int
    unique_images: int
    vectors: int
    seconds: float
    scan_seconds: float
    uids_npy: bool

    def as_metadata(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "matches": self.matches,
                "unique_images": self.unique_images, "vectors": self.vectors,
                "seconds": round(self.seconds, 2), "scan_seconds": round(self.scan_seconds, 2),
                "pairs_per_s": round(self.vectors * self.prompts / max(self.scan_seconds, 1e-9)),
                "uids_npy": self.uids_npy}


def load_prompts(source: str, config: ExportConfig) -> Prompts:
    """Prompts from a file: .txt (one a line: texts, or image paths with prompt_kind 'image'),
    .npy ((n, dim) embeddings), .csv/.jsonl/.parquet (`embedding_column` of float lists, labelled
    by `query_column` when present; else `query_column` holds texts or image paths)."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    config.validate()
    fs, path = io.filesystem(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"prompts {source!r} not found: expected a .txt, .csv, .jsonl, "
                                ".parquet or .npy file")
    ext, kind = os.path.splitext(path)[1].lower(), config.prompt_kind
    with fs.open(path, "rb") as f:
        if ext == ".npy":
            _check_kind(kind, ("auto", "embedding"), source)
            return Prompts(embeddings=np.load(f))
        if ext == ".txt":
            _check_kind(kind, ("auto", "text", "image"), source)
            lines = [line.strip() for line in f.read().decode("utf-8").splitlines()]
            return _texts_or_images([line for line in lines if line], kind)
        readers = {".parquet": pq.read_table, ".csv": pacsv.read_csv,
                   ".jsonl": pajson.read_json, ".json": pajson.read_json}
        if ext not in readers:
            raise ValueError(f"prompts {source!r}: expected a .txt, .csv, .jsonl, .parquet or "
                             ".npy file")
        table = readers[ext](f)
    names = table.column_names
    if config.embedding_column in names and kind in ("auto", "embedding"):
        labels = (tuple(str(v) for v in table.column(config.query_column).to_pylist())
                  if config.query_column in names else ())
        vectors = np.asarray(table.column(config.embedding_column).to_pylist(), np.float32)
        return Prompts(embeddings=vectors, embedding_labels=labels)
    if config.query_column not in names or kind == "embedding":
        raise ValueError(f"prompts {source!r} have columns {names}: expected a "
                         f"{config.query_column!r} column of prompts or an "
                         f"{config.embedding_column!r} column of embeddings")
    values = [str(v).strip() for v in table.column(config.query_column).to_pylist()
              if v is not None and str(v).strip()]
    return _texts_or_images(values, kind)


def _check_kind(kind: str, allowed: tuple[str, ...], source: str) -> None:
    if kind not in allowed:
        raise ValueError(f"prompt_kind={kind!r} cannot read {source!r}: expected one of "
                         f"{allowed} for this file type")


def _texts_or_images(values: list[str], kind: str) -> Prompts:
    return Prompts(images=tuple(values)) if kind == "image" else Prompts(texts=tuple(values))


def check_prompts(prompts: Prompts, dim: int | None = None) -> None:
    """Refuse, naming the value, what cannot be scored: no prompts, blank texts, embeddings of
    the wrong shape (against the index's `dim` when known), not finite, or of norm 0."""
    if len(prompts) == 0:
        raise ValueError("no prompts: expected at least one text, image or embedding")
    blank = [i for i, t in enumerate(prompts.texts) if not t.strip()]
    if blank:
        raise ValueError(f"text prompt {blank[0]} is blank: expected non-empty text")
    e = prompts.embeddings
    if e is None:
        return
    e = np.asarray(e)
    if e.ndim != 2 or (dim is not None and e.shape[1] != dim):
        raise ValueError(f"prompt embeddings of shape {e.shape}: expected (n, "
                         f"{dim if dim is not None else 'dim'}), the index's dim")
    if not np.isfinite(e).all():
        raise ValueError("prompt embeddings hold NaN or infinite values: expected finite floats")
    zero = np.flatnonzero(np.linalg.norm(e.astype(np.float32), axis=1) == 0)
    if len(zero):
        raise ValueError(f"prompt embedding {int(zero[0])} is all zeros: expected a direction")
    if prompts.embedding_labels and len(prompts.embedding_labels) != len(e):
        raise ValueError(f"{len(prompts.embedding_labels)} embedding labels for {len(e)} "
                         "embeddings: expected one each")


def encode_prompts(index: Any, prompts: Prompts, batch_size: int) -> np.ndarray:
    """(p, dim) float32 normalised vectors, in `Prompts.labels` order; texts and images through
    the index's own model (the one its manifest names)."""
    from clip_index.search.searcher import _open_image

    parts: list[np.ndarray] = []
    texts = list(prompts.texts)
    for lo in range(0, len(texts), batch_size):
        parts.append(index.model.encode_text(texts[lo:lo + batch_size]))
    images = [_open_image(_read_bytes(path)) for path in prompts.images]  # all, before encoding
    if images:
        import torch

        for lo in range(0, len(images), batch_size):
            pixels = [index.model.preprocess(img) for img in images[lo:lo + batch_size]]
            parts.append(index.model.encode_images(torch.stack(pixels)))
    if prompts.embeddings is not None:
        parts.append(normalise(np.asarray(prompts.embeddings, dtype=np.float32)))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _read_bytes(path: str) -> bytes:
    fs, fs_path = io.filesystem(path)
    if not fs.exists(fs_path):
        raise FileNotFoundError(f"image prompt {path!r} not found: expected a local or fsspec "
                                "path to an image")
    with fs.open(fs_path, "rb") as f:
        return bytes(f.read())


def run_export(index_dir: str, output_dir: str, config: ExportConfig,
               prompts: Prompts) -> ExportResult:
    """Every match of every prompt at or above ``config.threshold`` in the index at `index_dir`,
    exact (one scan of the stored vectors for all prompts), written to `output_dir`."""
    from clip_index.search.searcher import ClipIndex

    config.validate()
    check_prompts(prompts)  # before the index opens: nothing to do
    start = time.monotonic()
    index = ClipIndex(index_dir)
    check_prompts(prompts, index.dim)
    missing = [p for p in prompts.images if not io.exists(p)]
    if missing:
        raise FileNotFoundError(f"image prompt {missing[0]!r} not found: expected a local or "
                                "fsspec path to an image")
    source = open_vectors(index)
    io.check_writable(output_dir)
    queries = encode_prompts(index, prompts, config.batch_size)
    encoded = time.monotonic()
    log.info("export: %d prompts, threshold %s, over %s", len(queries), config.threshold,
             source.what)
    matches = scan(queries, source, config.threshold, config.block_rows, config.max_per_prompt)
    scanned = time.monotonic()
    labels, kinds = prompts.labels(), prompts.kinds()
    table = (union_table(matches, labels, index.mapping.table) if config.union
             else matches_table(matches, labels, index.mapping.table))
    io.write_parquet_atomic(io.join(output_dir, MATCHES_FILE), table)
    uids = table.column(schema.UID)
    subset, why_not = datacomp_uids(uids)
    if subset is not None:
        buffer = _io.BytesIO()
        np.save(buffer, subset)
        io.write_bytes_atomic(io.join(output_dir, UIDS_FILE), buffer.getvalue())
    else:
        log.warning("export: no %s written: %s", UIDS_FILE, why_not)
    unique = len(subset) if subset is not None else len(pc.unique(uids))
    seconds = time.monotonic() - start
    counts = matches.per_prompt(len(labels)).tolist()
    summary = {
        "index_dir": index_dir, "model": index.manifest.get("model"),
        "pretrained": index.manifest.get("pretrained"), "dim": index.dim,
        "vectors": len(index), "source": source.what, "threshold": config.threshold,
        "max_per_prompt": config.max_per_prompt, "union": config.union,
        "block_rows": config.block_rows, "rows": table.num_rows, "matches": len(matches),
        "unique_images": unique,
        "prompts": [{"prompt": label, "kind": kind, "matches": count,
                     "capped": i in matches.capped}
                    for i, (label, kind, count) in enumerate(zip(labels, kinds, counts))],
        "files": {"matches": MATCHES_FILE, "uids": UIDS_FILE if subset is not None else None},
        "uids_npy_skipped": why_not, "seconds": round(seconds, 3),
        "encode_seconds": round(encoded - start, 3),
        "scan_seconds": round(scanned - encoded, 3),
        "vectors_per_s": round(len(index) / max(scanned - encoded, 1e-9)),
        "pairs_per_s": round(len(index) * len(labels) / max(scanned - encoded, 1e-9)),
    }
    io.write_json(io.join(output_dir, SUMMARY_FILE), summary)
    log.info("export: %d prompts → %d matches, %d distinct images in %s (%.1fs)", len(labels),
             len(matches), unique, output_dir, seconds)
    return ExportResult(len(labels), table.num_rows, unique, len(index), seconds,
                        scanned - encoded, subset is not None)


def mapping_rows(mapping: pa.Table, ids: np.ndarray) -> pa.Table:
    """The id mapping's rows `ids` (any order), every column but the faiss id, taken chunk by
    chunk (the memory-mapped mapping is one chunk per shard; a whole-table take would copy
    every chunk of it first)."""
    columns = [name for name in mapping.column_names if name != schema.FAISS_ID]
    batches = mapping.select(columns).to_batches()
    if not len(ids) or not batches:
        return mapping.select(columns).schema.empty_table()
    offsets = np.cumsum([0] + [b.num_rows for b in batches])
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    bounds = np.searchsorted(sorted_ids, offsets)
    parts = [batches[c].take(pa.array(sorted_ids[lo:hi] - offsets[c]))
             for c, (lo, hi) in enumerate(zip(bounds, bounds[1:])) if hi > lo]
    taken = pa.Table.from_batches(parts).combine_chunks()
    return taken.take(pa.array(np.argsort(order, kind="stable")))  # back to the order asked


def matches_table(matches: Matches, labels: Sequence[str], mapping: pa.Table) -> pa.Table:
    """One row per (prompt, match): prompt, prompt_index, rank, uid, url, caption (and any
    further id-mapping column), score, i; by prompt, score descending, faiss id ascending."""
    rows = mapping_rows(mapping, matches.id)
    head = pa.table({PROMPT: pa.array(np.asarray(labels, dtype=object)[matches.prompt]
                                      if len(matches) else [], pa.string()),
                     PROMPT_INDEX: pa.array(matches.prompt, pa.int32()),
                     schema.RANK: pa.array(matches.rank, pa.int32())})
    return _assemble(head, rows, matches.score, matches.id)


def union_table(matches: Matches, labels: Sequence[str], mapping: pa.Table) -> pa.Table:
    """One row per matched image: its best score, the prompt that gave it (the first prompt
    on a tie), how many prompts it matched; by score descending, faiss id ascending."""
    order = np.lexsort((matches.prompt, -matches.score, matches.id))
    ids = matches.id[order]
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, int)
    counts = np.diff(np.r_[first, len(ids)]).astype(np.int32)
    best = order[first]
    score, ids, prompt = matches.score[best], matches.id[best], matches.prompt[best]
    ranked = np.lexsort((ids, -score))
    score, ids, prompt, counts = score[ranked], ids[ranked], prompt[ranked], counts[ranked]
    head = pa.table({PROMPT: pa.array(np.asarray(labels, dtype=object)[prompt]
                                      if len(ids) else [], pa.string()),
                     PROMPT_INDEX: pa.array(prompt, pa.int32()),
                     PROMPTS_MATCHED: pa.array(counts, pa.int32()),
                     schema.RANK: pa.array(np.arange(1, len(ids) + 1), pa.int32())})
    return _assemble(head, mapping_rows(mapping, ids), score, ids)


def _assemble(head: pa.Table, rows: pa.Table, score: np.ndarray, ids: np.ndarray) -> pa.Table:
    columns = {**{n: head.column(n) for n in head.column_names},
               **{n: rows.column(n) for n in rows.column_names},
               schema.SCORE: pa.array(score, pa.float32()),
               schema.FAISS_ID: pa.array(ids, pa.int64())}
    return pa.table(columns)


def datacomp_uids(uids: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray | None, str | None]:
    """The distinct `uids` as DataComp's subset array, or (None, why not).

    DataComp's format (mlfoundations/datacomp, README "Selecting samples in the filtering
    track" and ``baselines/utils.py``): a 1-D structured array of ``np.dtype("u8,u8")``, each
    uid's 32 hex digits split into (int(uid[:16], 16), int(uid[16:32], 16)), sorted, saved with
    ``np.save``. ``resharder.py`` loads it with ``np.load(..., mmap_mode="r")``, asserts the
    dtype and finds each sample's uid by ``np.searchsorted`` (left and right), copying a sample
    once per occurrence: so the array here is also de-duplicated.

    Only a uid of exactly 32 hex digits (a 128-bit DataComp uid) converts; when any matched uid
    is not one (a dataset with its own ids), no array is written and the reason names one.
    """
    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    distinct = pc.unique(arr.cast(pa.string()))
    if len(distinct) and distinct.null_count:
        return None, "a matched row has no uid"
    ok = pc.match_substring_regex(distinct, _HEX_UID)
    if len(distinct) and not pc.all(ok).as_py():
        bad = distinct.filter(pc.invert(ok))[0].as_py()
        return None, (f"uid {bad!r} is not a 128-bit DataComp uid (32 hex digits); the subset "
                      "format holds only those")
    values = distinct.to_pylist()
    out = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in values], DATACOMP_UID_DTYPE)
    out.sort()
    return out, None


def uid_strings(subset: np.ndarray) -> list[str]:
    """The 32-hex uids of a DataComp subset array (the inverse of `datacomp_uids`)."""
    return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in subset.tolist()]

