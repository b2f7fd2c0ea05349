"""Thumbnails for test folders: the WebP the download step makes (`resize.thumbnail`), put
where the pipeline puts it: a `thumbnail` column of embedding shards (carried through by the
embed step), or ``thumbnails/`` of an already published folder (aligned with ``data/``)."""

from __future__ import annotations

import io as _io
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from clip_index import io, schema
from clip_index.download.resize import thumbnail
from clip_index.index.thumbnails import ThumbnailWriter


def webp_of(body: bytes, size_px: int = 128) -> bytes:
    """The download step's thumbnail of an encoded image."""
    with Image.open(_io.BytesIO(body)) as img:
        return thumbnail(img.convert("RGB"), size_px)


def add_thumbnail_column(folder: Path, make: Callable[[str], bytes | None]) -> None:
    """Give every embedding shard in `folder` a `thumbnail` column (before `embedding`, as the
    embed step writes it): `make(uid)` for successful rows, null for the rest."""
    for path in io.list_shards(str(folder)):
        table = pq.read_table(path)
        ok = pc.equal(table.column(schema.STATUS), "success").to_pylist()
        thumbs = [make(uid) if good else None
                  for uid, good in zip(table.column(schema.UID).to_pylist(), ok)]
        at = table.schema.get_field_index(schema.EMBEDDING)
        table = table.add_column(at, pa.field(schema.THUMBNAIL, pa.binary()),
                                 pa.array(thumbs, pa.binary()))
        pq.write_table(table, path, store_schema=False)


def add_thumbnails(output_dir: Path, bodies: dict[str, bytes]) -> None:
    """``thumbnails/`` of a published folder, one per data/ row whose uid is in `bodies`."""
    for path in io.list_shards(str(output_dir / schema.DATA_DIR)):
        uids = pq.read_table(path, columns=[schema.UID]).column(schema.UID).to_pylist()
        column = [webp_of(bodies[u]) if u in bodies else None for u in uids]
        with ThumbnailWriter(str(output_dir), io.shard_number(path)) as writer:
            writer.write(pa.table({schema.UID: uids,
                                   schema.THUMBNAIL: pa.array(column, pa.binary())}))
