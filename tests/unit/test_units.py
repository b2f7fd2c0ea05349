"""Work units: how shards are split into a loop's tasks, and how every later step checks that it
found exactly the shards the load step planned."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clip_index import io
from clip_index.cli import shard_list
from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from clip_index.index.write import run_write
from clip_index.units import (
    UNIT_FILE,
    UnitRecord,
    collected_shards,
    download_shards,
    group_shards,
    plan_units,
)
from tests.support.outputs import make_embedding_shards
from tests.support.shards import mark_complete


def _manifest(folder: Path, rows: list[int]) -> str:
    io.write_json(str(folder / "manifest.json"),
                  {"shards": [{"index": i, "rows": r} for i, r in enumerate(rows)]})
    return str(folder)


@pytest.mark.parametrize("shards, width", [(1280, 32), (1280, 8), (1280, 100), (130, 32),
                                           (2, 32), (7, 3), (1, 1)])
def test_units_cover_every_shard_once_in_order_and_never_exceed_the_width(
        tmp_path: Path, shards: int, width: int) -> None:
    units = plan_units(_manifest(tmp_path, [10_000] * shards), width)
    assert len(units) == min(width, shards)
    assert [s for u in units for s in u["shards"]] == list(range(shards))
    sizes = [len(u["shards"]) for u in units]
    assert max(sizes) - min(sizes) <= 1  # as even as whole shards allow
    assert [u["unit"] for u in units] == list(range(len(units)))
    assert sum(u["rows"] for u in units) == 10_000 * shards


def test_units_balance_rows_not_just_shards(tmp_path: Path) -> None:
    # a short last shard (as load writes it): units stay within one shard's rows of each other
    units = plan_units(_manifest(tmp_path, [100] * 9 + [10]), 3)
    rows = [u["rows"] for u in units]
    assert max(rows) - min(rows) <= 100 and sum(rows) == 910


@pytest.mark.parametrize("width", [0, 101])
def test_a_width_past_the_platform_limit_is_refused(tmp_path: Path, width: int) -> None:
    with pytest.raises(ValueError, match=f"max_units={width}: expected 1 to 100"):
        plan_units(_manifest(tmp_path, [5]), width)


def test_complete_shards_ignores_unfinished_ones_and_refuses_duplicates(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, shard in ((a, 0), (a, 1), (b, 2)):
        folder.mkdir(exist_ok=True)
        (folder / io.shard_name(shard)).write_bytes(b"x")
        mark_complete(str(folder / io.shard_name(shard)))
    (b / io.shard_name(3)).write_bytes(b"x")  # written, but its stats (the done marker) are not
    assert io.complete_shards([str(a), str(b), str(tmp_path / "absent")]) == {
        0: str(a), 1: str(a), 2: str(b)}
    (b / io.shard_name(1)).write_bytes(b"x")
    mark_complete(str(b / io.shard_name(1)))
    with pytest.raises(RuntimeError, match="shard 1 is in two folders"):
        io.complete_shards([str(a), str(b)])


def test_require_shards_names_what_is_missing_and_what_was_not_planned() -> None:
    io.require_shards([2, 0, 1], range(3), "write")
    with pytest.raises(RuntimeError, match=r"write: found 2 of the 3 shards .*; missing 1$"):
        io.require_shards([0, 2], range(3), "write")
    with pytest.raises(RuntimeError, match=r"missing 0, 1, 2; not planned 7"):
        io.require_shards([7], range(3), "x")


def test_write_and_index_refuse_to_publish_part_of_a_run(tmp_path: Path) -> None:
    """The collected input held one shard fewer than planned (a lost task output, a launcher
    that fetched only part of a list): write fails instead of publishing 2 of 3 shards."""
    shards = make_embedding_shards(tmp_path / "emb", rows_per_shard=20, shards=2, dim=16)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"write: .*found 2 of the 3 shards.*missing 2"):
        run_write([str(shards)], str(out), expected_shards=[0, 1, 2])
    assert not (out / "manifest.json").exists()
    run_write([str(shards)], str(out), expected_shards=[0, 1])
    (out / "data" / io.shard_name(1)).unlink()
    with pytest.raises(RuntimeError, match=r"index: .*found 1 of the 2 shards.*missing 1"):
        run_index(str(out), IndexConfig(index_key="Flat", recall_queries=0))


def test_embed_says_which_image_shards_no_download_task_finished(tmp_path: Path) -> None:
    from clip_index.config import EmbedConfig
    from clip_index.embed.step import run_embed

    images = tmp_path / "images"
    images.mkdir()
    (images / io.shard_name(4)).write_bytes(b"partial")  # no stats: the download was cut off
    config = EmbedConfig(model="tiny-clip", pretrained="none", num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"image shards \[4, 5\] are not complete"):
        run_embed([str(images)], [4, 5], str(tmp_path / "emb"), config)


def test_an_empty_unit_writes_its_record_and_nothing_else(tmp_path: Path) -> None:
    """A group past the dataset's last shard (fewer shards than tasks): the task succeeds
    without loading a model, and its record says it was given nothing."""
    from clip_index.config import DownloadConfig, EmbedConfig
    from clip_index.download.step import run_download
    from clip_index.embed.step import run_embed

    urls = _manifest(tmp_path / "urls", [5])
    run_download(urls, [], str(tmp_path / "images"), DownloadConfig())
    assert UnitRecord.read(str(tmp_path / "images")) == UnitRecord([], [0])
    # an unknown model would fail at once, but a known one is not loaded for no shards
    result = run_embed([str(tmp_path / "images")], [], str(tmp_path / "emb"),
                       EmbedConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert result.shards == [] and UnitRecord.read(str(tmp_path / "emb")) == UnitRecord([], [0])
    assert io.list_shards(str(tmp_path / "emb")) == []


@pytest.mark.parametrize("shards, groups, parts", [(1280, 8, 4), (1280, 100, 1), (3, 2, 2),
                                                   (7, 3, 3), (1, 1, 1), (130, 7, 5)])
def test_groups_and_download_units_cover_every_shard_once(
        tmp_path: Path, shards: int, groups: int, parts: int) -> None:
    """Every task computes its own shards from the manifest: the download units of a group
    are exactly the group's shards, and all groups together the dataset, each shard once."""
    urls = _manifest(tmp_path, [10_000] * shards)
    seen = []
    for g in range(groups):
        units = [download_shards(urls, g, p, groups, parts) for p in range(parts)]
        assert [s for u in units for s in u] == group_shards(urls, g, groups, parts)
        seen += group_shards(urls, g, groups, parts)
    assert seen == list(range(shards))


@pytest.mark.parametrize("group, part, groups, parts, needle", [
    (3, 0, 3, 2, "group=3: expected 0 to 2"), (0, 2, 3, 2, "part=2: expected 0 to 1"),
    (0, 0, 0, 2, "groups=0: expected 1 to 100"), (0, 0, 1, 101, "parts=101")])
def test_a_position_outside_the_loops_is_refused(tmp_path: Path, group: int, part: int,
                                                 groups: int, parts: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        download_shards(_manifest(tmp_path, [5]), group, part, groups, parts)


def test_collected_records_find_shards_given_twice_and_foreign_runs(tmp_path: Path) -> None:
    a, b, c = (str(tmp_path / n) for n in "abc")
    UnitRecord([0, 1], [0, 1, 2, 3]).write(a)
    UnitRecord([2, 3], [0, 1, 2, 3]).write(b)
    assert collected_shards([a, b]) == ([0, 1, 2, 3], [0, 1, 2, 3])
    UnitRecord([1, 2], [0, 1, 2, 3]).write(c)
    with pytest.raises(RuntimeError, match=r"shards \[1, 2\] were given to two tasks"):
        collected_shards([a, b, c])
    UnitRecord([4], [4]).write(c)
    with pytest.raises(RuntimeError, match="come from different load steps"):
        collected_shards([a, c])
    with pytest.raises(FileNotFoundError, match="unit.json is missing"):
        collected_shards([str(tmp_path / "absent")])


def test_write_refuses_folders_whose_records_miss_a_group(tmp_path: Path) -> None:
    """The embed folders' records name 3 dataset shards; one group's folder is not among the
    collected ones: the write fails naming the missing shard (as the CLI write does)."""
    shards = make_embedding_shards(tmp_path / "emb", rows_per_shard=20, shards=2, dim=16)
    UnitRecord([0, 1], [0, 1, 2]).write(str(shards))
    with pytest.raises(RuntimeError, match=r"write: .*found 2 of the 3 shards.*missing 2"):
        run_write([str(shards)], str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()
    (shards / UNIT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no unit.json.*--urls DIR"):
        run_write([str(shards)], str(tmp_path / "out"))


@pytest.mark.parametrize("spec, shards", [("3", [3]), ("0-3", [0, 1, 2, 3]),
                                          ("0-1,7,9-10", [0, 1, 7, 9, 10])])
def test_cli_shard_spec(spec: str, shards: list[int]) -> None:
    assert shard_list(spec) == shards


@pytest.mark.parametrize("spec", ["", "a-b", "3-", "-2"])
def test_cli_shard_spec_refuses_nonsense(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected shard numbers"):
        shard_list(spec)
