"""Configs reject bad values up front, naming the value and what was expected."""

import pytest

from clip_index.config import ConfigError, DownloadConfig, EmbedConfig, IndexConfig, LoadConfig


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (LoadConfig(dataset=" "), "dataset"),
        (LoadConfig(dataset="x.parquet", shard_size=0), "shard_size=0"),
        (LoadConfig(dataset="x.parquet", limit=-1), "limit=-1"),
        (DownloadConfig(resize_mode="stretch"), "resize_mode='stretch'"),
        (DownloadConfig(timeout_s=0), "timeout_s=0"),
        (DownloadConfig(encode_quality=101), "encode_quality=101"),
        (DownloadConfig(max_aspect_ratio=0.5), "max_aspect_ratio=0.5"),
        (DownloadConfig(max_buffered_bytes=0), "max_buffered_bytes=0"),
        (EmbedConfig(dtype="int8"), "dtype='int8'"),
        (EmbedConfig(device="tpu"), "device='tpu'"),
        (IndexConfig(max_index_memory_usage="lots"), "max_index_memory_usage='lots'"),
    ],
)
def test_bad_values_are_named(config: object, needle: str) -> None:
    with pytest.raises(ConfigError, match="expected") as info:
        config.validate()  # type: ignore[attr-defined]
    assert needle in str(info.value)


def test_defaults_are_valid() -> None:
    for config in (LoadConfig(dataset="d.parquet"), DownloadConfig(), EmbedConfig(),
                   IndexConfig()):
        config.validate()
