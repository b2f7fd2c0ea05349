"""Filters of a search: which rows may be returned (minimum image size, maximum aspect ratio,
minimum caption-similarity score, maximum faces, no changed images, a uid subset), evaluated
once per distinct filter over the index's column store (`clip_index.index.columns`) into a
bitmap that faiss applies inside the first stage (``IDSelectorBitmap`` through the search
parameters: rows that fail are never candidates, so a selective filter still returns k results)
and that the re-rank checks again.

A row whose value is unknown for a filtered column fails a minimum/maximum filter (a size or a
face count nobody measured is not evidence); `exclude_changed` drops only rows known to have
changed (rows without a source hash stay).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clip_index import io, schema
from clip_index.index.columns import ColumnStore

log = logging.getLogger(__name__)

CACHED_SELECTIONS = 16  # distinct filters whose bitmaps are kept (n/8 bytes each)


@dataclass(frozen=True)
class Filters:
    """What a search may return; None (False) = no such filter.

    min_width / min_height: the image's real size, pixels. max_aspect_ratio: long side /
    short side (>= 1). min_clip_b32_score / min_clip_l14_score: DataComp's caption-image
    cosine (OpenAI ViT-B/32, ViT-L/14). max_faces: most faces detected (0 = no people).
    exclude_changed: drop images whose bytes changed since the crawl (sha256 differs).
    uids: a file of uids to restrict to (.npy as DataComp subsets: uint64 pairs or strings;
    .txt: one a line; .parquet: a `uid` column), local or any fsspec path.
    """

    min_width: int | None = None
    min_height: int | None = None
    max_aspect_ratio: float | None = None
    min_clip_b32_score: float | None = None
    min_clip_l14_score: float | None = None
    max_faces: int | None = None
    exclude_changed: bool = False
    uids: str | None = None

    @classmethod
    def parse(cls, value: Filters | Mapping[str, Any] | str | None) -> Filters:
        """Filters from a dict, a JSON object, ``name=value,name=value`` or None; a clear
        error naming an unknown filter or a bad value."""
        if value is None or isinstance(value, Filters):
            return value or cls()
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return cls()
            if text.startswith("{"):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"filters {text!r}: not a JSON object ({exc})") from exc
            else:
                pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError(f"filters {text!r}: expected name=value pairs separated "
                                     f"by commas, names {FILTER_NAMES}")
                value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, Mapping):
            raise ValueError(f"filters of type {type(value).__name__}: expected an object of "
                             f"{FILTER_NAMES}")
        unknown = sorted(set(value) - set(FILTER_NAMES))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}: expected some of {FILTER_NAMES}")
        return cls(**{k: _coerce(k, v) for k, v in value.items() if v is not None})

    @property
    def empty(self) -> bool:
        return self == Filters()

    def as_dict(self) -> dict[str, Any]:
        """The filters that are set."""
        return {k: v for k, v in asdict(self).items() if _set(v)}

    def columns(self) -> list[str]:
        """The column-store columns these filters read."""
        need = []
        if self.min_width is not None or self.max_aspect_ratio is not None:
            need.append("width")
        if self.min_height is not None or self.max_aspect_ratio is not None:
            need.append("height")
        for name, column in (("min_clip_b32_score", "clip_b32_similarity_score"),
                             ("min_clip_l14_score", "clip_l14_similarity_score"),
                             ("max_faces", schema.FACE_COUNT),
                             ("exclude_changed", schema.IMAGE_CHANGED)):
            if _set(getattr(self, name)):
                need.append(column)
        return need


FILTER_NAMES = tuple(f.name for f in fields(Filters))


def _set(value: Any) -> bool:
    """A filter value that filters (0 does: max_faces=0; None and False do not)."""
    return value is not None and value is not False


def _coerce(name: str, value: Any) -> Any:
    """A filter's value as its type, checked; the error names the filter and what it takes."""
    try:
        if name == "exclude_changed":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if name == "uids":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(value)
            return value.strip()
        if isinstance(value, bool):
            raise ValueError(value)
        if name in ("min_width", "min_height", "max_faces"):
            number: float = int(value)
            if number != float(value) or number < 0:
                raise ValueError(value)
            return number
        number = float(value)
        if not np.isfinite(number) or (name == "max_aspect_ratio" and number < 1):
            raise ValueError(value)
        return number
    except (TypeError, ValueError):
        expected = {"exclude_changed": "true or false", "uids": "a path of a uid file",
                    "max_aspect_ratio": "a number >= 1 (long side / short side)",
                    "min_clip_b32_score": "a number (a cosine, -1..1)",
                    "min_clip_l14_score": "a number (a cosine, -1..1)"}
        raise ValueError(f"filter {name}={value!r}: expected "
                         f"{expected.get(name, 'an integer >= 0')}") from None


class Selection:
    """The rows a filter keeps: a bitmap (bit i = faiss id i, little-endian bit order, as
    faiss's IDSelectorBitmap reads it), its count, and the faiss selector over it."""

    def __init__(self, mask: np.ndarray) -> None:
        import faiss

        self.rows = len(mask)
        self.count = int(np.count_nonzero(mask))
        self.bits = np.packbits(mask, bitorder="little")
        # the selector holds a plain pointer into self.bits: self keeps both alive
        self.selector = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(self.bits))
        self._ids: np.ndarray | None = None

    def ids(self) -> np.ndarray:
        """The kept faiss ids, ascending (computed once)."""
        if self._ids is None:
            self._ids = np.flatnonzero(np.unpackbits(self.bits, count=self.rows,
                                                     bitorder="little")).astype(np.int64)
        return self._ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """True for each id (-1 padding: False) that the filter keeps."""
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < self.rows)
        safe = np.where(ok, ids, 0)
        return ok & (((self.bits[safe >> 3] >> (safe & 7)) & 1) == 1)


class FilterEngine:
    """Evaluates filters over an index's column store and uid column, caching each distinct
    filter's Selection (LRU of CACHED_SELECTIONS)."""

    def __init__(self, store: ColumnStore, uid_column: Callable[[], pa.ChunkedArray]) -> None:
        self.store = store
        self.uid_column = uid_column
        self._cache: OrderedDict[Filters, Selection] = OrderedDict()

    def check(self, filters: Filters) -> None:
        """Refuse filters on columns this index lacks, naming them and what it has."""
        missing = [c for c in filters.columns() if c not in self.store]
        if missing:
            raise ValueError(f"filters {filters.as_dict()} need column(s) {missing}, which this "
                             f"index does not have (it has {self.store.names or 'none'}): "
                             "the dataset had no such metadata, or the index was built "
                             "before the column store existed")

    def selection(self, filters: Filters) -> Selection | None:
        """The Selection of `filters` (None when no filter is set)."""
        if filters.empty:
            return None
        cached = self._cache.get(filters)
        if cached is not None:
            self._cache.move_to_end(filters)
            return cached
        self.check(filters)
        selection = Selection(self._mask(filters))
        log.info("filters %s keep %d of %d rows", filters.as_dict(), selection.count,
                 selection.rows)
        self._cache[filters] = selection
        while len(self._cache) > CACHED_SELECTIONS:
            self._cache.popitem(last=False)
        return selection

    def _mask(self, f: Filters) -> np.ndarray:
        s = self.store
        mask = np.ones(s.rows, dtype=bool)
        if f.min_width is not None:
            mask &= s.known("width") & (s.column("width") >= f.min_width)
        if f.min_height is not None:
            mask &= s.known("height") & (s.column("height") >= f.min_height)
        if f.max_aspect_ratio is not None:
            w = s.column("width").astype(np.float32)
            h = s.column("height").astype(np.float32)
            known = s.known("width") & s.known("height")
            ratio = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
            mask &= known & (ratio <= f.max_aspect_ratio)
        for name, column in (("min_clip_b32_score", "clip_b32_similarity_score"),
                             ("min_clip_l14_score", "clip_l14_similarity_score")):
            threshold = getattr(f, name)
            if threshold is not None:  # NaN (unknown) compares False
                # compared as stored (float16, ~3 digits): rounding is monotonic, so no row at
                # or above the threshold is lost; rows up to ~1e-4 below it may pass
                mask &= s.column(column) >= np.float16(threshold)
        if f.max_faces is not None:
            mask &= s.known(schema.FACE_COUNT) & (s.column(schema.FACE_COUNT) <= f.max_faces)
        if f.exclude_changed:
            mask &= s.column(schema.IMAGE_CHANGED) != 1
        if f.uids is not None:
            wanted = read_uids(f.uids)
            mask &= np.asarray(pc.is_in(self.uid_column(), value_set=wanted)
                               .to_numpy(zero_copy_only=False), dtype=bool)
        return mask


def read_uids(path: str) -> pa.Array:
    """The uids of a subset file, as strings: a DataComp subset ``.npy`` (pairs of uint64, the
    32-hex-digit uid split in two), a ``.npy`` of strings, a ``.txt`` (one a line) or a
    ``.parquet`` / ``.arrow`` with a `uid` column."""
    fs, fs_path = io.filesystem(path)
    if not fs.exists(fs_path):
        raise ValueError(f"filter uids={path!r}: no such file (expected a .npy, .txt or "
                         ".parquet of uids)")
    ext = os.path.splitext(fs_path)[1].lower()
    with fs.open(fs_path, "rb") as f:
        if ext == ".npy":
            array = np.load(f, allow_pickle=False)
            if array.dtype.names and len(array.dtype.names) == 2:  # DataComp's u8,u8 pairs
                hi, lo = (array[n].astype(np.uint64) for n in array.dtype.names)
                return pa.array([f"{a:016x}{b:016x}" for a, b in zip(hi.tolist(),
                                                                     lo.tolist())], pa.string())
            if array.dtype.kind in "US":
                return pa.array(array.astype(str).tolist(), pa.string())
            raise ValueError(f"filter uids={path!r}: a .npy of {array.dtype}: expected "
                             "DataComp's uint64 pairs (dtype 'u8,u8') or strings")
        if ext == ".txt":
            lines = f.read().decode("utf-8").splitlines()
            return pa.array([u.strip() for u in lines if u.strip()], pa.string())
        if ext in (".parquet", ".arrow"):
            import pyarrow.parquet as pq

            table = pq.read_table(f) if ext == ".parquet" else \
                pa.ipc.open_file(f.read()).read_all()
            if schema.UID not in table.column_names:
                raise ValueError(f"filter uids={path!r} has columns {table.column_names}: "
                                 "expected a 'uid' column")
            return pc.cast(table.column(schema.UID), pa.string()).combine_chunks()
    raise ValueError(f"filter uids={path!r}: expected a .npy, .txt, .parquet or .arrow file")


_FLAG_HELP = {
    "min_width": "only images at least this wide, pixels",
    "min_height": "only images at least this tall, pixels",
    "max_aspect_ratio": "only images whose long/short side ratio is at most this",
    "min_clip_b32_score": "only rows whose DataComp clip_b32_similarity_score is at least this",
    "min_clip_l14_score": "only rows whose DataComp clip_l14_similarity_score is at least this",
    "max_faces": "only images with at most this many detected faces (0: no people)",
    "exclude_changed": "drop images whose bytes changed since the crawl (sha256 differs)",
    "uids": "only these uids: a .npy (DataComp subset), .txt or .parquet file",
}


def add_filter_arguments(parser: Any) -> None:
    """--min-width ... --uids, and --filters (JSON or name=value,...), on an argparse parser."""
    group = parser.add_argument_group("filters (applied inside the index scan; see "
                                      "docs/index-and-serving.md)")
    for f in fields(Filters):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "exclude_changed":
            group.add_argument(flag, action="store_true", help=_FLAG_HELP[f.name])
        else:
            group.add_argument(flag, dest=f.name, default=None, help=_FLAG_HELP[f.name],
                               metavar="FILE" if f.name == "uids" else "N")
    group.add_argument("--filters", default=None, metavar="SPEC",
                       help="filters as JSON or name=value,... (names: "
                            f"{', '.join(FILTER_NAMES)}); the flags above add to them")


def filters_from_args(args: Any) -> Filters:
    """The filters of parsed arguments (see add_filter_arguments); errors name the flag."""
    base = Filters.parse(getattr(args, "filters", None)).as_dict()
    for name in FILTER_NAMES:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            base[name] = value
    return Filters.parse(base)
