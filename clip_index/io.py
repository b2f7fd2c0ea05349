"""Storage helpers over fsspec (local paths, ``gs://``, Vertex's ``/gcs/`` mounts): shard names,
atomic writes, JSON and parquet I/O."""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")


def filesystem(path: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `path` and the path as that filesystem names it."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    return fs, fs_path


def join(base: str, *parts: str) -> str:
    """Join path parts, keeping a URL scheme (``gs://b/x`` + ``y`` → ``gs://b/x/y``)."""
    return posixpath.join(base.rstrip("/"), *parts)


def shard_name(shard: int) -> str:
    """``part-00042.parquet`` for shard 42."""
    return f"part-{shard:05d}.parquet"


def stats_name(shard: int) -> str:
    """``part-00042_stats.json``: the shard's stats, written last, so it marks the shard done."""
    return f"part-{shard:05d}_stats.json"


def shard_number(name: str) -> int:
    """The shard number in a ``part-NNNNN.parquet`` file name."""
    match = _SHARD.match(posixpath.basename(name))
    if not match:
        raise ValueError(f"{name!r} is not a shard file name: expected part-NNNNN.parquet")
    return int(match.group(1))


def list_shards(directory: str) -> list[str]:
    """The ``part-NNNNN.parquet`` files of a folder, in shard order (full paths)."""
    fs, fs_dir = filesystem(directory)
    if not fs.isdir(fs_dir):
        return []
    names = [posixpath.basename(p) for p in fs.ls(fs_dir, detail=False)]
    shards = sorted((shard_number(n), n) for n in names if _SHARD.match(n))
    return [join(directory, n) for _, n in shards]


def complete_shards(directories: Sequence[str]) -> dict[int, str]:
    """shard number → the folder holding it, for every shard whose stats file (written last, the
    "done" marker) exists in one of `directories`: the outputs of a loop's tasks, one folder per
    work unit, each with many shards. One listing per folder. A shard found in two folders is an
    error: two tasks wrote it, and which one is right cannot be told."""
    found: dict[int, str] = {}
    for directory in directories:
        fs, fs_dir = filesystem(directory)
        if not fs.isdir(fs_dir):
            continue
        names = {posixpath.basename(p) for p in fs.ls(fs_dir, detail=False)}
        for name in names:
            if not _SHARD.match(name) or stats_name(shard_number(name)) not in names:
                continue
            shard = shard_number(name)
            if shard in found:
                raise RuntimeError(f"shard {shard} is in two folders, {found[shard]} and "
                                   f"{directory}: two tasks wrote it")
            found[shard] = directory
    return found


def require_shards(found: Iterable[int], expected: Iterable[int], what: str) -> None:
    """Raise unless `found` is exactly the `expected` shards (what the load step planned), so
    that a step never publishes part of a run in silence: a task that lost its outputs, a
    collected input the platform handed over incompletely, a folder listed while empty."""
    have, want = set(found), set(expected)
    if have == want:
        return
    missing, extra = sorted(want - have), sorted(have - want)
    raise RuntimeError(
        f"{what}: found {len(have)} of the {len(want)} shards the load step planned"
        + (f"; missing {_numbers(missing)}" if missing else "")
        + (f"; not planned {_numbers(extra)}" if extra else ""))


def _numbers(shards: list[int]) -> str:
    return ", ".join(map(str, shards[:20])) + (f" ... ({len(shards)} in all)"
                                               if len(shards) > 20 else "")


def exists(path: str) -> bool:
    fs, fs_path = filesystem(path)
    return bool(fs.exists(fs_path))


def makedirs(path: str) -> None:
    fs, fs_path = filesystem(path)
    fs.makedirs(fs_path, exist_ok=True)


def _temp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    fs, fs_path = filesystem(path)
    fs.makedirs(posixpath.dirname(fs_path), exist_ok=True)
    tmp = _temp_name(fs_path)
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, fs_path)


def write_json(path: str, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: str) -> Any:
    fs, fs_path = filesystem(path)
    with fs.open(fs_path, "rb") as f:
        return json.loads(f.read())


def write_arrow_atomic(path: str, table: pa.Table) -> None:
    """One table as an Arrow IPC file, atomically: no encoding work on the way out and none on
    the way back (for short-lived files such as checkpoint chunks, not for outputs)."""
    fs, fs_path = filesystem(path)
    fs.makedirs(posixpath.dirname(fs_path), exist_ok=True)
    tmp = _temp_name(fs_path)
    try:
        with fs.open(tmp, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        fs.mv(tmp, fs_path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def read_arrow(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, fs_path = filesystem(path)
    with fs.open(fs_path, "rb") as f:
        reader = pa.ipc.open_file(f)
        table = reader.read_all()
    return table.select(columns) if columns else table


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Writer options: no dictionary and no statistics for binary columns (image bytes), which
    never repeat and are never filtered on; building them tripled the time to write an image
    shard (0.43 s vs 0.12 s for 10,000 images)."""
    small = [f.name for f in schema
             if not (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))]
    return {"use_dictionary": small, "write_statistics": small}


class AtomicParquetWriter:
    """A parquet writer that streams row groups to a temporary file and renames it on close.

    Use as a context manager; on an exception the temporary file is removed and `path` is left
    untouched, so a crashed step never leaves a shard that looks complete.
    """

    def __init__(self, path: str, schema: pa.Schema,
                 compression: str | dict[str, str] = "zstd") -> None:
        self.path = path
        self.schema = schema
        self._fs, fs_path = filesystem(path)
        self._fs.makedirs(posixpath.dirname(fs_path), exist_ok=True)
        self._final = fs_path
        self._tmp = _temp_name(fs_path)
        self._file = self._fs.open(self._tmp, "wb")
        self._writer = pq.ParquetWriter(self._file, schema, compression=compression,
                                        **parquet_options(schema))
        self.rows = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._writer.close()
        self._file.close()
        if exc_type is None:
            self._fs.mv(self._tmp, self._final)
        else:
            self._fs.rm(self._tmp)


def write_parquet_atomic(path: str, table: pa.Table,
                         compression: str | dict[str, str] = "zstd") -> None:
    """Write one table as a parquet file, atomically (`compression`: one codec, or a codec
    per column)."""
    with AtomicParquetWriter(path, table.schema, compression) as writer:
        writer.write(table)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, fs_path = filesystem(path)
    return pq.read_table(fs_path, columns=columns, filesystem=fs)


def read_parquet_schema(path: str) -> pa.Schema:
    """A parquet file's schema, from its footer alone."""
    fs, fs_path = filesystem(path)
    with fs.open(fs_path, "rb") as f:
        return pq.read_schema(f)


def iter_parquet_batches(path: str, columns: list[str] | None = None,
                         batch_rows: int = 1000) -> Iterator[pa.RecordBatch]:
    """A parquet file's rows in batches (bounded memory whatever the file's size)."""
    fs, fs_path = filesystem(path)
    with fs.open(fs_path, "rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


def check_writable(directory: str) -> None:
    """Fail early, naming the folder, when `directory` cannot be created or written."""
    try:
        makedirs(directory)
        probe = join(directory, f".clip-index-write-test-{uuid.uuid4().hex[:8]}")
        fs, fs_path = filesystem(probe)
        with fs.open(fs_path, "wb") as f:
            f.write(b"ok")
        fs.rm(fs_path)
    except Exception as exc:  # any backend error means the same thing to the user
        raise PermissionError(
            f"output folder {directory!r} cannot be written: {exc}. "
            "Expected a writable local folder or a gs:// path you have write access to."
        ) from exc


def local_path(path: str) -> str:
    """A local path for `path`: itself when local, else a downloaded temporary copy (for faiss,
    which reads only local files)."""
    fs, fs_path = filesystem(path)
    if isinstance(fs, LocalFileSystem):
        return str(fs_path)
    local = os.path.join(tempfile.mkdtemp(prefix="clip-index-"), posixpath.basename(fs_path))
    fs.get_file(fs_path, local)
    return local
