"""The retrieve pipeline, as compiled (YAML) and run locally through kfp.local."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from clip_index.launch.compiler import compile_pipeline
from clip_index.pipelines import PIPELINES, PipelineSettings
from tests.support.http_server import TestServer
from tests.support.images import image_bytes
from tests.support.outputs import build_tiny_index

SETTINGS = PipelineSettings(cpu_image="reg.example/clip-index-cpu:abc123",
                            gpu_image="reg.example/clip-index-gpu:abc123",
                            download_parallelism=3)


def test_compiled_retrieve_pipeline(tmp_path: Path) -> None:
    assert "clip-index-retrieve" in PIPELINES
    spec = yaml.safe_load(Path(compile_pipeline("clip-index-retrieve", str(tmp_path),
                                                SETTINGS)).read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"queries", "index_dir"} <= {n for n, p in params.items() if not p.get("isOptional")}
    assert params["num_images"]["defaultValue"] == 10
    assert params["deduplicate"]["defaultValue"] is True
    assert params["download_matches"]["defaultValue"] is False
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"reg.example/clip-index-cpu:abc123"}  # no GPU image, pinned tag
    assert not any("accelerator" in str(e["container"].get("resources", {}))
                   for e in executors.values())
    tasks = spec["root"]["dag"]["tasks"]
    assert {"load-queries", "retrieve-matches"} <= set(tasks)
    condition = next(t for name, t in tasks.items() if name.startswith("condition"))
    assert "download_matches" in condition["triggerPolicy"]["condition"]
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    loop = next(t for t in inner.values() if "iteratorPolicy" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    assert not tasks["retrieve-matches"]["cachingOptions"].get("enableCache", False)


@pytest.mark.integration
def test_retrieve_pipeline_runs_locally_and_downloads_the_matches(
        tmp_path: Path, http_server: TestServer) -> None:
    from kfp import components, local

    n = 40
    urls = [http_server.add_bytes(f"/img-{i}.jpg", image_bytes(64, 48, (i * 6, 40, 200)))
            for i in range(n)]
    vectors = build_tiny_index(tmp_path / "index", n=n, urls=urls)
    np.save(tmp_path / "queries.npy", vectors[[1, 2, 30]])
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    # the compiled YAML itself is what runs
    compiled = compile_pipeline("clip-index-retrieve", str(tmp_path / "yaml"), SETTINGS)
    pipeline = components.load_component_from_file(compiled)
    pipeline(queries=str(tmp_path / "queries.npy"), index_dir=str(tmp_path / "index"),
                   num_images=3, download_matches=True, allow_private_networks=True,
                   shard_size=4)
    matches = list((tmp_path / "root").rglob("matches.parquet"))
    assert len(matches) == 1
    rows = pq.read_table(matches[0]).to_pylist()
    assert [r["uid"] for r in rows if r["rank"] == 1] == ["img-001", "img-002", "img-030"]
    assert {r["query"] for r in rows} == {"embedding-0", "embedding-1", "embedding-2"}
    images = [pq.read_table(p) for p in (tmp_path / "root").rglob("part-*.parquet")
              if "download" in str(p)]
    statuses = [s for t in images for s in t.column("status").to_pylist()]
    assert len(statuses) == len({r["uid"] for r in rows}) and set(statuses) == {"success"}
