"""Metadata carried through: the load step keeps DataComp's columns (face boxes as a count,
crawl-time names prefixed source_), the download step passes them through and flags images
whose bytes changed since the crawl."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clip_index import io, schema
from clip_index.config import ConfigError, DownloadConfig, LoadConfig
from clip_index.download.step import download_shard
from clip_index.load.step import run_load
from tests.support import images
from tests.support.http_server import TestServer

JPEG = images.image_bytes(64, 48)


def _datacomp(n: int, urls: list[str] | None = None, sha: list[str | None] | None = None
              ) -> pa.Table:
    """Rows with DataComp-small's pool columns and types."""
    return pa.table({
        "uid": [f"{i:032x}" for i in range(n)],
        "url": urls or [f"http://example.com/{i}.jpg" for i in range(n)],
        "text": [f"caption {i}" for i in range(n)],
        "original_width": pa.array([100 + i for i in range(n)], pa.int64()),
        "original_height": pa.array([50 + i for i in range(n)], pa.int64()),
        "clip_b32_similarity_score": pa.array([0.2 + i / 100 for i in range(n)], pa.float64()),
        "clip_l14_similarity_score": pa.array([0.1 + i / 100 for i in range(n)], pa.float64()),
        "face_bboxes": pa.array([[[0.1, 0.1, 0.2, 0.2]] * (i % 3) if i != 1 else None
                                 for i in range(n)], pa.list_(pa.list_(pa.float64()))),
        "sha256": sha or [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        "unrelated": list(range(n)),
    })


def test_load_keeps_datacomp_columns_by_default(tmp_path: Path) -> None:
    src = tmp_path / "pool.parquet"
    pq.write_table(_datacomp(5), src)
    run_load(LoadConfig(dataset=str(src)), str(tmp_path / "urls"))
    table = io.read_parquet(io.list_shards(str(tmp_path / "urls"))[0])
    assert table.column_names == [
        "uid", "url", "caption", "source_original_width", "source_original_height",
        "clip_b32_similarity_score", "clip_l14_similarity_score", "face_count",
        "source_sha256"]
    assert table.schema.field("face_count").type == pa.int32()
    assert table.schema.field("source_original_width").type == pa.int32()
    assert table.schema.field("clip_b32_similarity_score").type == pa.float32()
    assert table.column("face_count").to_pylist() == [0, None, 2, 0, 1]
    assert table.column("source_original_width").to_pylist() == [100, 101, 102, 103, 104]


def test_load_extra_columns_named_none_and_missing(tmp_path: Path) -> None:
    src = tmp_path / "pool.parquet"
    pq.write_table(_datacomp(3), src)
    run_load(LoadConfig(dataset=str(src), extra_columns="unrelated, face_bboxes"),
             str(tmp_path / "a"))
    table = io.read_parquet(io.list_shards(str(tmp_path / "a"))[0])
    assert table.column_names == ["uid", "url", "caption", "unrelated", "face_count"]
    run_load(LoadConfig(dataset=str(src), extra_columns=""), str(tmp_path / "b"))
    assert io.read_parquet(io.list_shards(str(tmp_path / "b"))[0]).column_names == [
        "uid", "url", "caption"]
    with pytest.raises(ValueError, match=r"extra_columns='nope' names \['nope'\]"):
        run_load(LoadConfig(dataset=str(src), extra_columns="nope"), str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="extra_columns='url'"):
        LoadConfig(dataset=str(src), extra_columns="url").validate()


def test_load_auto_without_datacomp_columns(tmp_path: Path) -> None:
    src = tmp_path / "plain.parquet"
    pq.write_table(_datacomp(3).select(["uid", "url", "text"]), src)
    run_load(LoadConfig(dataset=str(src)), str(tmp_path / "urls"))
    assert io.read_parquet(io.list_shards(str(tmp_path / "urls"))[0]).column_names == [
        "uid", "url", "caption"]


def test_download_passes_extras_through_and_flags_changed_images(
        tmp_path: Path, http_server: TestServer) -> None:
    server = http_server
    same, changed = server.add_bytes("/same.jpg", JPEG), server.add_bytes("/changed.jpg", JPEG)
    dead = server.url("/missing.jpg")
    real = hashlib.sha256(JPEG).hexdigest()
    src = tmp_path / "pool.parquet"
    pq.write_table(_datacomp(4, urls=[same, changed, dead, same],
                             sha=[real.upper(), "0" * 64, real, None]), src)
    run_load(LoadConfig(dataset=str(src)), str(tmp_path / "urls"))
    out = tmp_path / "images" / "part-00000.parquet"
    download_shard(io.list_shards(str(tmp_path / "urls"))[0], str(out),
                   DownloadConfig(allow_private_networks=True, download_retries=0, timeout_s=2.0))
    rows = {r["uid"]: r for r in pq.read_table(out).to_pylist()}
    first, second, failed, no_hash = (rows[f"{i:032x}"] for i in range(4))
    assert first["sha256"] == real and first["image_changed"] is False
    assert second["image_changed"] is True
    assert failed["status"] != "success" and failed["image_changed"] is None
    assert no_hash["image_changed"] is None  # no source hash: cannot tell
    # the source's columns ride along, on failed rows too
    assert failed["clip_l14_similarity_score"] == pytest.approx(0.12)
    assert [rows[f"{i:032x}"]["face_count"] for i in range(4)] == [0, None, 2, 0]
    assert first["original_width"] == 64 and first["source_original_width"] == 100
    names = pq.read_schema(out).names
    assert names[:len(schema.IMAGES_SCHEMA)] == schema.IMAGES_SCHEMA.names
    assert names[-1] == "image_changed"
