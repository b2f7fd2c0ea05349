"""Load step: files of any supported format become URL shards; bad input fails before work."""

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from clip_index import io
from clip_index.config import LoadConfig
from clip_index.load.step import is_hub_id, plan_shards, run_load


def _rows(n: int) -> pa.Table:
    return pa.table({
        "uid": pa.array([f"id{i}" for i in range(n)], pa.string()),
        "url": pa.array([f"http://example.com/{i}.jpg" for i in range(n)], pa.string()),
        "text": pa.array([f"caption {i}" for i in range(n)], pa.string()),
        "extra": pa.array(list(range(n)), pa.int64()),
    })


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_load_formats_into_shards(tmp_path, fmt: str) -> None:
    src = tmp_path / f"urls.{fmt}"
    table = _rows(25)
    if fmt == "parquet":
        pq.write_table(table, src)
    elif fmt == "csv":
        pacsv.write_csv(table, src)
    else:
        src.write_text("\n".join(json.dumps(r) for r in table.to_pylist()))
    out = tmp_path / "out"
    result = run_load(LoadConfig(dataset=str(src), shard_size=10), str(out))
    assert result.rows == 25
    assert plan_shards(str(out)) == [0, 1, 2]
    shards = [io.read_parquet(p) for p in io.list_shards(str(out))]
    assert [s.num_rows for s in shards] == [10, 10, 5]
    merged = pa.concat_tables(shards)
    assert merged.column_names == ["uid", "url", "caption"]
    assert merged.column("uid").to_pylist() == [f"id{i}" for i in range(25)]
    assert merged.column("caption")[3].as_py() == "caption 3"


def test_limit_and_folder_of_files(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(_rows(30).slice(0, 15), src / "a.parquet")
    pq.write_table(_rows(30).slice(15), src / "b.parquet")
    result = run_load(LoadConfig(dataset=str(src), limit=20, shard_size=100), str(tmp_path / "o"))
    assert result.rows == 20


def test_no_id_column_uses_stable_row_numbers(tmp_path) -> None:
    src = tmp_path / "u.parquet"
    pq.write_table(_rows(3).drop(["uid"]), src)
    run_load(LoadConfig(dataset=str(src), id_column=""), str(tmp_path / "o"))
    shard = io.read_parquet(io.list_shards(str(tmp_path / "o"))[0])
    assert shard.column("uid").to_pylist() == ["000000000", "000000001", "000000002"]


def test_missing_column_is_named_before_any_write(tmp_path) -> None:
    src = tmp_path / "u.parquet"
    pq.write_table(_rows(3), src)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"url_column='link'.*expected one of"):
        run_load(LoadConfig(dataset=str(src), url_column="link"), str(out))
    assert io.list_shards(str(out)) == []


def test_empty_dataset_is_an_error(tmp_path) -> None:
    src = tmp_path / "u.parquet"
    pq.write_table(_rows(0), src)
    with pytest.raises(ValueError, match="no rows"):
        run_load(LoadConfig(dataset=str(src)), str(tmp_path / "o"))


def test_column_without_urls_is_an_error(tmp_path) -> None:
    src = tmp_path / "u.parquet"
    pq.write_table(_rows(3).set_column(1, "url", pa.array(["a", "b", "c"])), src)
    with pytest.raises(ValueError, match="does not hold URLs"):
        run_load(LoadConfig(dataset=str(src)), str(tmp_path / "o"))


def test_missing_dataset_and_hub_ids(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="was not found"):
        run_load(LoadConfig(dataset=str(tmp_path / "nope.parquet")), str(tmp_path / "o"))
    assert is_hub_id("mlfoundations/datacomp_small")
    assert not is_hub_id(str(tmp_path))
    assert not is_hub_id("gs://bucket/path")


def test_hub_loader_streams_and_checks_columns(tmp_path) -> None:
    """The hub branch is `datasets.load_dataset(..., streaming=True)`; here it reads a local
    folder through that same call (the hub itself is unreachable in tests)."""
    from clip_index.load.step import _hub_batches

    src = tmp_path / "hub"
    src.mkdir()
    pq.write_table(_rows(40), src / "train-00000.parquet")
    batches = list(_hub_batches(LoadConfig(dataset=str(src))))
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 40
    assert set(table.column_names) == {"uid", "url", "text"}
    with pytest.raises(ValueError, match="caption_column='caption'"):
        list(_hub_batches(LoadConfig(dataset=str(src), caption_column="caption")))
