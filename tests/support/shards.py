"""Shards written by hand in tests: the stats file that marks a shard complete."""

from clip_index import io
from clip_index.stats import ShardStats


def mark_complete(shard_path: str) -> None:
    """Write the stats file beside ``.../part-NNNNN.parquet``, as a finished step does (last)."""
    folder, name = shard_path.rsplit("/", 1)
    shard = io.shard_number(name)
    io.write_json(io.join(folder, io.stats_name(shard)), ShardStats(shard=shard).as_dict())
