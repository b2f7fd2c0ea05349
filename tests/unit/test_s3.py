"""s3:// locations (offered for Kubeflow's `dataset` and `output_dir`) resolve to s3fs, which
the `s3` extra installs and `all` (what both images install) includes."""

from __future__ import annotations

from pathlib import Path

import tomllib

from clip_index import io

ROOT = Path(__file__).resolve().parents[2]


def test_s3_paths_resolve_to_s3fs() -> None:
    fs, path = io.filesystem("s3://bucket/pool/part-00000.parquet")
    assert type(fs).__module__.startswith("s3fs"), type(fs)
    assert path == "bucket/pool/part-00000.parquet"
    assert io.join("s3://bucket/out", "faiss") == "s3://bucket/out/faiss"


def test_the_all_extra_brings_s3fs() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("s3fs") for r in extras["s3"])
    assert "s3" in extras["all"][0].split("[")[1].rstrip("]").split(",")
