"""The export pipeline, compiled with kfp's compiler (YAML) and run locally through kfp.local."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from kfp import compiler

from clip_index.pipelines import PipelineSettings
from clip_index.pipelines.export import make_export_pipeline
from tests.support.outputs import build_tiny_index

SETTINGS = PipelineSettings(cpu_image="reg.example/clip-index-cpu:abc123",
                            gpu_image="reg.example/clip-index-gpu:abc123")


def _compile(folder: Path) -> Path:
    path = folder / "clip-index-export.yaml"
    compiler.Compiler().compile(make_export_pipeline(SETTINGS), str(path))
    return path


def test_compiled_export_pipeline(tmp_path: Path) -> None:
    spec = yaml.safe_load(_compile(tmp_path).read_text())
    assert spec["pipelineInfo"]["name"] == "clip-index-export"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {n for n, p in params.items() if not p.get("isOptional")} == {
        "index_dir", "prompts", "threshold"}
    assert params["threshold"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["max_per_prompt"]["defaultValue"] == 0
    assert params["union"]["defaultValue"] is False
    assert params["block_rows"]["defaultValue"] == 32768
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {
        "reg.example/clip-index-cpu:abc123"}  # CPU only, pinned tag
    resources = next(iter(executors.values()))["container"]["resources"]
    assert "accelerator" not in resources and resources["cpuLimit"] == 14.0
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"export-matches"}
    assert not tasks["export-matches"]["cachingOptions"].get("enableCache", False)


@pytest.mark.integration
def test_export_pipeline_runs_locally(tmp_path: Path) -> None:
    from kfp import components, local

    vectors = build_tiny_index(tmp_path / "index", n=60)
    np.save(tmp_path / "prompts.npy", vectors[[3, 40]])
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    pipeline = components.load_component_from_file(str(_compile(tmp_path)))  # the YAML runs
    pipeline(index_dir=str(tmp_path / "index"), prompts=str(tmp_path / "prompts.npy"),
             threshold=0.999, max_per_prompt=5)
    [matches] = list((tmp_path / "root").rglob("matches.parquet"))
    rows = pq.read_table(matches).to_pylist()
    assert [(r["prompt"], r["uid"], r["rank"]) for r in rows] == [
        ("embedding-0", "img-003", 1), ("embedding-1", "img-040", 1)]
    summary = json.loads((matches.parent / "summary.json").read_text())
    assert summary["threshold"] == 0.999 and summary["max_per_prompt"] == 5
    assert "uid" in summary["uids_npy_skipped"]  # img-003 is not a DataComp uid
