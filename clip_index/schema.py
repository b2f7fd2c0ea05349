"""The data contract between steps: column names, pyarrow schemas, row statuses and file names."""

from __future__ import annotations

import pyarrow as pa

# Row statuses and the per-row error live in clip_index.status (no pyarrow there, so the
# download step's decode workers stay small); they are part of this contract all the same.
from clip_index.status import STATUSES, RowError, Status

__all__ = ["STATUSES", "RowError", "Status"]

# Column names shared by every step (the same names from pipeline to parquet).
UID = "uid"
URL = "url"
CAPTION = "caption"
STATUS = "status"
ERROR = "error"
IMAGE = "image"
WIDTH = "width"
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
SHA256 = "sha256"
THUMBNAIL = "thumbnail"
EMBEDDING = "embedding"
FAISS_ID = "i"
QUERY = "query"
RANK = "rank"
SCORE = "score"
# Metadata carried from the source (load) and the download step, for filtered search
IMAGE_CHANGED = "image_changed"  # bool: the downloaded bytes' sha256 differs from the source's
FACE_BBOXES = "face_bboxes"  # DataComp: a list of face boxes per row ...
FACE_COUNT = "face_count"  # ... which the load step reduces to their count (int32)
# a source column whose name a later step writes itself is kept with this prefix
# (DataComp's crawl-time original_width / original_height / sha256 → source_original_width, ...)
SOURCE_PREFIX = "source_"
SOURCE_SHA256 = SOURCE_PREFIX + SHA256
# the load step's default extra columns: DataComp's metadata, each kept when the source has it
DATACOMP_COLUMNS = ("original_width", "original_height", "clip_b32_similarity_score",
                    "clip_l14_similarity_score", FACE_BBOXES, SHA256)


def extra_column_name(source: str) -> str:
    """The name a source column kept by the load step takes in the URL shards and after:
    `face_bboxes` becomes `face_count`; a name a later step writes itself (IMAGES_SCHEMA's,
    embedding, thumbnail, image_changed) takes the `source_` prefix; others stay."""
    if source == FACE_BBOXES:
        return FACE_COUNT
    if source in IMAGES_SCHEMA.names or source in (EMBEDDING, THUMBNAIL, IMAGE_CHANGED,
                                                      FACE_COUNT):
        return SOURCE_PREFIX + source
    return source


# the types the load step gives known extra columns (others keep the source's type)
EXTRA_TYPES: dict[str, pa.DataType] = {
    SOURCE_PREFIX + ORIGINAL_WIDTH: pa.int32(), SOURCE_PREFIX + ORIGINAL_HEIGHT: pa.int32(),
    "clip_b32_similarity_score": pa.float32(), "clip_l14_similarity_score": pa.float32(),
    FACE_COUNT: pa.int32(), SOURCE_SHA256: pa.string(),
}


# load → download: one row per input row.
URLS_SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
    ]
)

def urls_schema(extras: list[pa.Field] | tuple[pa.Field, ...] = ()) -> pa.Schema:
    """URLS_SCHEMA followed by the load step's extra (passthrough) columns."""
    return pa.schema(list(URLS_SCHEMA) + list(extras))


def extra_fields(urls: pa.Schema) -> list[pa.Field]:
    """The passthrough columns of a load shard's schema (those after uid, url, caption)."""
    return [f for f in urls if f.name not in URLS_SCHEMA.names]


# download → embed: every input row, with its status; image bytes only on success.
IMAGES_SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(IMAGE, pa.binary()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(ORIGINAL_WIDTH, pa.int32()),
        pa.field(ORIGINAL_HEIGHT, pa.int32()),
        pa.field(SHA256, pa.string()),
        # a small WebP of the image (download's thumbnail_px), carried to output_dir/thumbnails/
        pa.field(THUMBNAIL, pa.binary()),
    ]
)


def images_schema(extras: list[pa.Field] | tuple[pa.Field, ...] = ()) -> pa.Schema:
    """IMAGES_SCHEMA followed by the load step's extra columns and, when the source gave a
    sha256 (`source_sha256`), the `image_changed` flag (null when either hash is missing)."""
    fields = list(IMAGES_SCHEMA) + list(extras)
    if any(f.name == SOURCE_SHA256 for f in extras):
        fields.append(pa.field(IMAGE_CHANGED, pa.bool_()))
    return pa.schema(fields)


def passthrough_fields(images: pa.Schema) -> list[pa.Field]:
    """The columns of a download shard that the embed step carries through as they are: every
    one but the step contract's own (uid, url, caption, status, error) and the image bytes:
    the image's sizes and hash, its thumbnail, and whatever the load step kept of the source."""
    own = {UID, URL, CAPTION, STATUS, ERROR, IMAGE, EMBEDDING}
    return [f for f in images if f.name not in own]


def embeddings_schema(dim: int, dtype: str = "float32",
                      extra: list[pa.Field] | None = None) -> pa.Schema:
    """embed → write: every input row with its status, the `extra` columns carried through
    from the download shard (`passthrough_fields`); `embedding` (dim floats, L2-normalised)
    is null unless the status is success. A variable-size list here: pyarrow's parquet reader
    rejects null entries in a fixed-size list column ("Expected all lists to be of size=…")."""
    return pa.schema(
        [
            pa.field(UID, pa.string(), nullable=False),
            pa.field(URL, pa.string()),
            pa.field(CAPTION, pa.string()),
            pa.field(STATUS, pa.string(), nullable=False),
            pa.field(ERROR, pa.string()),
            *(extra or []),
            pa.field(EMBEDDING, pa.list_(arrow_float(dtype))),
        ],
        metadata={"dim": str(dim)},
    )


def data_schema(dim: int, dtype: str = "float32",
                extra: list[pa.Field] | None = None) -> pa.Schema:
    """The published `output_dir/data/` parquet: successful rows only, with the `extra`
    columns carried through (not the thumbnail: it goes to thumbnails/)."""
    return pa.schema(
        [
            pa.field(UID, pa.string(), nullable=False),
            pa.field(URL, pa.string()),
            pa.field(CAPTION, pa.string()),
            *(f for f in extra or [] if f.name != THUMBNAIL),
            pa.field(EMBEDDING, pa.list_(arrow_float(dtype), dim), nullable=False),
        ]
    )


# The published `output_dir/failed/` parquet: every row that did not make it into the index.
FAILED_SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
    ]
)

# `output_dir/id_mapping/`: row i of the concatenated files is faiss id i.
ID_MAPPING_SCHEMA = pa.schema(
    [
        pa.field(FAISS_ID, pa.int64(), nullable=False),
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
    ]
)


# retrieve: one row per (query, match), best first; `rank` starts at 1, `score` is the cosine.
MATCHES_SCHEMA = pa.schema(
    [
        pa.field(QUERY, pa.string(), nullable=False),
        pa.field(RANK, pa.int32(), nullable=False),
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(SCORE, pa.float32(), nullable=False),
    ]
)


def arrow_float(dtype: str) -> pa.DataType:
    """The pyarrow type for an embedding dtype name ('float32' or 'float16')."""
    if dtype == "float32":
        return pa.float32()
    if dtype == "float16":
        return pa.float16()
    raise ValueError(f"embedding dtype {dtype!r}: expected 'float32' or 'float16'")


# File and folder names inside step outputs and output_dir.
MANIFEST = "manifest.json"
DATA_DIR = "data"
FAILED_DIR = "failed"
FAISS_DIR = "faiss"
INDEX_FILE = "knn.index"
# in faiss/: the id mapping again, as one uncompressed Arrow IPC file that readers memory-map
# (id_mapping/ parquet would have to be decoded into every query process's memory)
MAPPING_FILE = "id_mapping.arrow"
ID_MAPPING_DIR = "id_mapping"
INDEX_INFOS = "index_infos.json"
RUN_STATS = "stats.json"
REPORT = "report.md"
