"""The index step's constraints are pipeline parameters, and its component writes the KFP
Metrics artifact (index key, vectors, dim, size, recall@1/@10, p50/p99) when run by kfp.local."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clip_index.launch.compiler import compile_pipeline
from clip_index.pipelines import PipelineSettings
from tests.support.outputs import random_unit, write_output_dir

INDEX_PARAMS = {"max_index_memory_usage": "4G", "current_memory_available": "16G",
                "max_index_query_time_ms": 10.0, "index_key": "", "target_recall": 0.95,
                "recall_queries": 1000, "should_be_memory_mappable": False,
                "two_stage_min_vectors": 250_000, "rerank_dtype": "float16"}


def test_index_constraints_are_pipeline_parameters(tmp_path: Path) -> None:
    spec = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path),
                                                PipelineSettings())).read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name, default in INDEX_PARAMS.items():
        assert params[name]["defaultValue"] == default, name
    task = spec["root"]["dag"]["tasks"]["build-index"]["inputs"]["parameters"]
    for name in INDEX_PARAMS:  # wired through to the component, same name
        assert task[name]["componentInputParameter"] == name


@pytest.mark.integration
def test_build_index_component_writes_metrics(tmp_path: Path) -> None:
    from kfp import local

    from clip_index.components import make_components
    from tests.support.kfp_stubs import index_only_pipeline

    out = tmp_path / "out"
    write_output_dir(out, random_unit(300, 16, seed=2), [f"u{i}" for i in range(300)],
                     [list(range(150)), list(range(150, 300))])

    build = make_components("x/cpu:1", "x/gpu:1").build_index
    index_only = index_only_pipeline(build, "HNSW16", 100)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    index_only(output_dir=str(out))
    outputs = [json.loads(p.read_text()) for p in (tmp_path / "root").rglob(
        "executor_output.json") if "build-index" in str(p)]
    (metrics,) = outputs[0]["artifacts"]["metrics"]["artifacts"]
    m = metrics["metadata"]
    assert m["index_key"] == "HNSW16" and m["vectors"] == 300 and m["dim"] == 16
    assert m["index_param"].startswith("efSearch=") and m["size_bytes"] > 0
    for name in ("recall_at_1", "recall_at_10", "latency_p50_ms", "latency_p99_ms"):
        assert isinstance(m[name], float), name
    assert m["recall_at_10"] >= 0.9


@pytest.mark.integration
def test_build_index_component_records_both_stages(tmp_path: Path) -> None:
    from kfp import local

    from clip_index.components import make_components
    from tests.support.kfp_stubs import index_only_pipeline

    out = tmp_path / "out"
    write_output_dir(out, random_unit(3000, 16, seed=2), [f"u{i}" for i in range(3000)],
                     [list(range(1500)), list(range(1500, 3000))])
    build = make_components("x/cpu:1", "x/gpu:1").build_index
    index_only = index_only_pipeline(build, "", 200, two_stage_min_vectors=1000,
                                     target_recall=0.8)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    index_only(output_dir=str(out))
    outputs = [json.loads(p.read_text()) for p in (tmp_path / "root").rglob(
        "executor_output.json") if "build-index" in str(p)]
    (metrics,) = outputs[0]["artifacts"]["metrics"]["artifacts"]
    m = metrics["metadata"]
    assert m["index_key"].startswith("IVF") and m["index_param"].startswith("nprobe=")
    assert "first stage" in m["stages"] and "rerank_vectors.index" in m["stages"]
    assert m["rerank_depth"] >= 10 and m["rerank_size_bytes"] > 3000 * 16 * 2  # float16
    assert m["recall_at_10"] >= 0.8
