"""Work units: which shards each pipeline task reads, decided from the load step's manifest and
the loop widths compiled into the pipeline, never from a planning task's output.

The index pipeline has two static loops: an outer one over `groups` embed groups (one embed
task, and one GPU task's worth of work, each) and, inside each group, an inner one over
`parts` download units. Download unit `group * parts + part` of ``groups * parts`` reads a
range of consecutive shards (`plan_units`); an embed group reads exactly the shards of its own
download units. Every task computes its own shards with the same function from the same
manifest, so no list of shards travels as a loop item (KFP's backends check loop-item types
against the consumer's, and kfp.local confuses an outer loop's item with an inner one's).

Each download and embed task writes ``unit.json`` into its output folder: the shards it was
given and every shard the load step wrote. The write step checks from these that the collected
folders hold every shard of the dataset, exactly once, without reading the URL shards again.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from clip_index import io, schema
from clip_index.limits import MAX_LOOP_WIDTH

UNIT_FILE = "unit.json"


def dataset_shards(urls_dir: str) -> list[tuple[int, int]]:
    """(shard, rows) of every shard the load step wrote into `urls_dir`, from its manifest."""
    manifest = io.read_json(io.join(urls_dir, schema.MANIFEST))
    return [(int(s["index"]), int(s["rows"])) for s in manifest["shards"]]


def split_shards(shards: Sequence[tuple[int, int]], units: int) -> list[list[int]]:
    """`shards` [(shard, rows)] split into exactly `units` lists of consecutive shards, as even
    in rows as whole shards allow; with fewer shards than units the last units are empty."""
    if not 1 <= units <= MAX_LOOP_WIDTH ** 2:
        raise ValueError(f"units={units}: expected 1 to {MAX_LOOP_WIDTH ** 2} work units")
    count = min(units, len(shards))
    total = sum(rows for _, rows in shards)
    out: list[list[int]] = [[] for _ in range(units)]
    seen = 0
    for index, (shard, rows) in enumerate(shards):
        # the unit its middle row falls in, but never leave a later unit without a shard
        unit = (min(int((seen + rows / 2) * count / total), count - 1) if total
                else index * count // len(shards))
        unit = max(unit, count - (len(shards) - index))
        out[unit].append(shard)
        seen += rows
    return out


def plan_units(urls_dir: str, max_units: int) -> list[dict[str, Any]]:
    """The shards a load step wrote, in at most `max_units` non-empty work units of consecutive
    shards: ``[{"unit": 0, "shards": [0, 1, ...], "rows": N}, ...]`` (the retrieve pipeline's
    download loop and `clip-index plan` read this)."""
    if not 1 <= max_units <= MAX_LOOP_WIDTH:
        raise ValueError(f"max_units={max_units}: expected 1 to {MAX_LOOP_WIDTH} (a loop's "
                         "iterations are collected, and Vertex AI refuses more artifacts)")
    shards = dataset_shards(urls_dir)
    if not shards:
        raise RuntimeError(f"{urls_dir}: the load step wrote no shards: nothing to plan")
    rows = dict(shards)
    return [{"unit": i, "shards": unit, "rows": sum(rows[s] for s in unit)}
            for i, unit in enumerate(split_shards(shards, max_units)) if unit]


def check_position(group: int, part: int, groups: int, parts: int) -> None:
    """Refuse a (group, part) outside the compiled loops, naming the values."""
    for name, value, width in (("groups", groups, MAX_LOOP_WIDTH), ("parts", parts,
                                                                    MAX_LOOP_WIDTH)):
        if not 1 <= value <= width:
            raise ValueError(f"{name}={value}: expected 1 to {width} (a loop width)")
    if not 0 <= group < groups:
        raise ValueError(f"group={group}: expected 0 to {groups - 1} (groups={groups})")
    if not 0 <= part < parts:
        raise ValueError(f"part={part}: expected 0 to {parts - 1} (parts={parts})")


def download_shards(urls_dir: str, group: int, part: int, groups: int, parts: int) -> list[int]:
    """The shards of download unit (`group`, `part`): unit ``group * parts + part`` of
    ``groups * parts``. Empty when the dataset has fewer shards than units."""
    check_position(group, part, groups, parts)
    return split_shards(dataset_shards(urls_dir), groups * parts)[group * parts + part]


def group_shards(urls_dir: str, group: int, groups: int, parts: int) -> list[int]:
    """The shards of embed group `group`: those of its `parts` download units."""
    check_position(group, 0, groups, parts)
    units = split_shards(dataset_shards(urls_dir), groups * parts)
    return [s for unit in units[group * parts:(group + 1) * parts] for s in unit]


@dataclass(frozen=True)
class UnitRecord:
    """What a task was given (``unit.json`` in its output folder): `shards`, and `dataset`,
    every shard the load step wrote (so that a later step can tell a whole run from part of
    one; None where the task's input was not a load step's folder)."""

    shards: list[int]
    dataset: list[int] | None

    def write(self, output_dir: str) -> None:
        io.write_json(io.join(output_dir, UNIT_FILE), asdict(self))

    @classmethod
    def read(cls, directory: str) -> UnitRecord:
        path = io.join(directory, UNIT_FILE)
        if not io.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: expected the unit record a download or embed task writes "
                "into its output folder (a folder of an older version, or not a step output)")
        data = io.read_json(path)
        dataset = data.get("dataset")
        return cls([int(s) for s in data["shards"]],
                   None if dataset is None else [int(s) for s in dataset])

    @classmethod
    def of_urls(cls, urls_dir: str, shards: Sequence[int]) -> UnitRecord:
        return cls([int(s) for s in shards], [s for s, _ in dataset_shards(urls_dir)])


def collected_shards(directories: Sequence[str]) -> tuple[list[int], list[int] | None]:
    """(the shards the tasks behind `directories` were given, every shard of the dataset, or
    None where a record does not know it) from their unit records; raises if they disagree on
    the dataset or a shard was given to two of them."""
    given: collections.Counter[int] = collections.Counter()
    datasets: set[tuple[int, ...] | None] = set()
    for directory in directories:
        record = UnitRecord.read(directory)
        given.update(record.shards)
        datasets.add(None if record.dataset is None else tuple(record.dataset))
    if len(datasets) > 1:
        raise RuntimeError(f"the folders {list(directories)[:3]} come from different load "
                           "steps (their unit records name different shards): one run each")
    twice = sorted(s for s, n in given.items() if n > 1)
    if twice:
        raise RuntimeError(f"shards {twice[:20]} were given to two tasks: the loop widths of "
                           "the tasks behind these folders disagree")
    dataset = next(iter(datasets), None)
    return sorted(given), None if dataset is None else list(dataset)
