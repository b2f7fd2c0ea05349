"""One parquet file of image URLs as the download step's input (`clip-index download --input`):
the load step's work for a single local or remote file, without shards or a manifest."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.config import LoadConfig
from clip_index.load.step import _check_columns

CAPTION_CANDIDATES = ("caption", "text")


def urls_file(path: str, id_column: str, url_column: str, caption_column: str | None,
              work_dir: str) -> str:
    """A parquet file of the download step's input columns (uid, url, caption) from `path`:
    `path` itself when its columns already are those, else a renamed copy in `work_dir`.
    Refuses a missing column before any download as the load step does, naming it and the
    columns there are.
    caption_column None: the first of `CAPTION_CANDIDATES` present, or none."""
    if not io.exists(path):
        raise FileNotFoundError(f"--input {path!r} does not exist: expected a parquet file "
                                "of image URLs")
    fs, fs_path = io.filesystem(path)
    with fs.open(fs_path, "rb") as f:
        names = pq.read_schema(f).names
    if caption_column is None:
        caption_column = next((c for c in CAPTION_CANDIDATES if c in names), "")
    _check_columns(names, LoadConfig(dataset=path, id_column=id_column, url_column=url_column,
                                     caption_column=caption_column))
    if (id_column, url_column, caption_column) == (schema.UID, schema.URL, schema.CAPTION):
        return path
    table = io.read_parquet(path, [c for c in (id_column, url_column, caption_column) if c])
    n = table.num_rows
    uids = (pc.cast(table.column(id_column), pa.string()) if id_column else
            pa.array([f"{i:09d}" for i in range(n)], pa.string()))  # the row number, as load
    captions = (pc.cast(table.column(caption_column), pa.string()) if caption_column else
                pa.nulls(n, pa.string()))
    out = io.join(work_dir, "input-urls.parquet")
    io.write_parquet_atomic(out, pa.table(
        [uids, pc.cast(table.column(url_column), pa.string()), captions],
        schema=schema.URLS_SCHEMA))
    return out
