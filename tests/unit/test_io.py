"""Shard naming and atomic writes: a failed write leaves nothing that looks complete."""

import pyarrow as pa
import pytest

from clip_index import io


def test_shard_names_round_trip() -> None:
    assert io.shard_name(42) == "part-00042.parquet"
    assert io.shard_number("/a/b/part-00042.parquet") == 42
    with pytest.raises(ValueError, match="part-NNNNN"):
        io.shard_number("data.parquet")


def test_list_shards_in_numeric_order(tmp_path) -> None:
    for i in (10, 2, 0):
        io.write_parquet_atomic(str(tmp_path / io.shard_name(i)), pa.table({"x": [i]}))
    (tmp_path / "part-00001_stats.json").write_text("{}")
    assert [io.shard_number(p) for p in io.list_shards(str(tmp_path))] == [0, 2, 10]


def test_atomic_writer_leaves_nothing_on_error(tmp_path) -> None:
    target = tmp_path / "part-00000.parquet"
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(RuntimeError), io.AtomicParquetWriter(str(target), schema) as w:
        w.write(pa.table({"x": [1, 2]}))
        raise RuntimeError("crash mid-shard")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_streams_row_groups(tmp_path) -> None:
    target = str(tmp_path / "part-00000.parquet")
    with io.AtomicParquetWriter(target, pa.schema([("x", pa.int64())])) as w:
        for i in range(3):
            w.write(pa.table({"x": [i, i]}))
    assert io.read_parquet(target).column("x").to_pylist() == [0, 0, 1, 1, 2, 2]


def test_check_writable_names_the_folder(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot be written"):
        io.check_writable(str(blocker / "out"))
