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


# load → download: one row per input row.
URLS_SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
    ]
)

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
