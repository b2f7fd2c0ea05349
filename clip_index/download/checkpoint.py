"""Row checkpoints for a shard in progress: finished rows are written in small chunks
beside the shard's output, so a run killed mid-shard redoes only the rows of the chunk it was
filling, and the finished shard holds every input row exactly once.

Layout, for the output ``DIR/part-00042.parquet``: ``DIR/.part-00042.parquet.partial/`` holds
``rows-00000.arrow``, ``rows-00001.arrow``, ... (Arrow IPC files: written and read back without
encoding work, where parquet chunks cost 0.1 ms per image; each written to a temporary name and
renamed, so a chunk is whole or absent). Each chunk has the output schema plus ``_row``, the
row's position in the input shard. `finish` streams the chunks into the output (atomically),
one chunk in memory at a time, then removes the folder.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from clip_index import io

log = logging.getLogger(__name__)

ROW = "_row"
_CHUNK = re.compile(r"^rows-(\d{5,})\.arrow$")


class ShardCheckpoint:
    """Chunks of finished rows for one shard output; see the module docstring."""

    def __init__(self, output_path: str, schema: pa.Schema,
                 compression: str | dict[str, str] = "zstd") -> None:
        self.output_path = output_path
        self.schema = schema
        self.compression = compression
        self.chunk_schema = schema.append(pa.field(ROW, pa.int64(), nullable=False))
        head, tail = posixpath.split(output_path)
        self.folder = posixpath.join(head, f".{tail}.partial")
        self._fs, self._fs_folder = io.filesystem(self.folder)
        self._next = 0

    @property
    def active(self) -> bool:
        """True while an interrupted run's checkpoint folder exists."""
        return bool(self._fs.exists(self._fs_folder))

    def _chunk_paths(self) -> list[str]:
        if not self._fs.isdir(self._fs_folder):
            return []
        names = [posixpath.basename(p) for p in self._fs.ls(self._fs_folder, detail=False)]
        found = sorted((int(m.group(1)), n) for n in names if (m := _CHUNK.match(n)))
        return [posixpath.join(self.folder, n) for _, n in found]

    def done_rows(self, uids: list[str]) -> set[int]:
        """Input positions already finished by an earlier run. `uids` is the input's uid column:
        when a chunk does not match it (the input changed), the checkpoint is discarded."""
        done: set[int] = set()
        paths = self._chunk_paths()
        for path in paths:
            table = io.read_arrow(path, columns=[ROW, "uid"])
            for row, uid in zip(table.column(ROW).to_pylist(), table.column("uid").to_pylist(),
                                strict=True):
                if row >= len(uids) or uids[row] != uid or row in done:
                    log.warning("checkpoint %s does not match the input: starting over",
                                self.folder)
                    self.discard()
                    return set()
                done.add(row)
        if paths:
            self._next = int(_CHUNK.match(posixpath.basename(paths[-1])).group(1)) + 1  # type: ignore[union-attr]
        return done

    def write(self, records: list[dict[str, Any]]) -> None:
        """Durably record finished rows (each record holds the output columns and ``_row``)."""
        if not records:
            return
        table = pa.Table.from_pylist(records, schema=self.chunk_schema)
        io.write_arrow_atomic(posixpath.join(self.folder, f"rows-{self._next:05d}.arrow"), table)
        self._next += 1

    def chunks(self) -> Iterator[pa.Table]:
        """The finished rows, one chunk at a time (without ``_row``)."""
        for path in self._chunk_paths():
            yield io.read_arrow(path).drop_columns([ROW])

    def finish(self, on_chunk: Callable[[pa.Table], None]) -> None:
        """Stream every chunk into the output file (atomic), calling `on_chunk` on each (to
        count it); then remove the checkpoint folder."""
        with io.AtomicParquetWriter(self.output_path, self.schema, self.compression) as writer:
            for table in self.chunks():
                writer.write(table)
                on_chunk(table)
        self.discard()

    def discard(self) -> None:
        if self._fs.exists(self._fs_folder):
            self._fs.rm(self._fs_folder, recursive=True)
        self._next = 0
