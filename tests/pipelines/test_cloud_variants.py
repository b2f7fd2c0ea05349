"""Compiled templates for the cloud: sizing, retries and caching settings in the Vertex YAML,
and the Kubeflow variant's kfp-kubernetes settings in its second YAML document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from clip_index.launch.compiler import compile_all, compile_pipeline
from clip_index.pipelines import PipelineSettings

SETTINGS = PipelineSettings(
    cpu_image="r/clip-index-cpu:abc", gpu_image="r/clip-index-gpu:abc", gpu_type="NVIDIA_TESLA_T4",
    gpu_count=2, embed_parallelism=3, embed_cpu="12", embed_memory="48G", download_memory="20Gi",
    task_retries=4, backoff_s=30)


def all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def executor(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return dict(spec["deploymentSpec"]["executors"][label]["container"])


def test_vertex_template_carries_sizing_retries_and_caching(tmp_path: Path) -> None:
    spec = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path), SETTINGS)).read_text())
    tasks = all_tasks(spec)
    embed = executor(spec, tasks["embed-images"])
    assert embed["image"] == "r/clip-index-gpu:abc"
    assert embed["resources"]["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert embed["resources"]["accelerator"]["resourceCount"] == "2"
    assert embed["resources"]["resourceCpuLimit"] == "12"
    assert embed["resources"]["resourceMemoryLimit"] == "48G"
    download = executor(spec, tasks["download-images"])
    assert download["resources"]["resourceMemoryLimit"] == "20Gi"
    assert "accelerator" not in download["resources"]
    for name in ("download-images", "embed-images"):
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] == 4
        assert policy["backoffDuration"] == "30s" and policy["backoffFactor"] == 2.0
        assert tasks[name]["cachingOptions"]["enableCache"] is True
    for name in ("write-embeddings", "build-index", "report"):
        assert not tasks[name].get("cachingOptions", {}).get("enableCache")
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    widths = {t["taskInfo"]["name"]: t["iteratorPolicy"]["parallelismLimit"]
              for dag in dags for t in dag["tasks"].values() if "iteratorPolicy" in t}
    # 32 downloads in 3 groups: 11 per group (33 tasks)
    assert sorted(widths.values()) == [3, 11]
    # the report reads the published folder only (thumbnails included) and writes HTML + MD
    outputs = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert set(tasks["report"]["inputs"]["artifacts"]) == {"index"}


def test_kubeflow_variant_is_a_separate_two_document_yaml(tmp_path: Path) -> None:
    pytest.importorskip("kfp.kubernetes")
    paths = compile_all(str(tmp_path), SETTINGS)
    assert sorted(Path(p).name for p in paths) == [
        "clip-index-export.yaml", "clip-index-kubeflow.yaml", "clip-index-retrieve.yaml",
        "clip-index.yaml"]
    assert len(list(yaml.safe_load_all((tmp_path / "clip-index.yaml").read_text()))) == 1
    spec, platform = yaml.safe_load_all((tmp_path / "clip-index-kubeflow.yaml").read_text())
    tasks = all_tasks(spec)
    embed = executor(spec, tasks["embed-images"])
    assert embed["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert embed["resources"]["accelerator"]["resourceCount"] == "2"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    embed_label = spec["components"][tasks["embed-images"]["componentRef"]["name"]][
        "executorLabel"]
    assert set(executors) == {embed_label}  # only the embed task goes to GPU nodes
    k8s = executors[embed_label]
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]


@pytest.mark.parametrize("change, message", [
    ({"gpu_type": "NVIDIA_GTX_1080"}, "gpu_type='NVIDIA_GTX_1080'"),
    ({"gpu_count": -1}, "gpu_count=-1"),
    ({"embed_parallelism": 0}, "embed_parallelism=0"),
    ({"embed_cpu": "eight"}, "embed_cpu='eight'"),
    ({"embed_cpu": "0"}, "embed_cpu='0'"),
    ({"index_memory": "64 gigs"}, "index_memory='64 gigs'"),
    ({"task_retries": -1}, "task_retries=-1"),
    ({"backoff_factor": 0.5}, "backoff_factor=0.5"),
    ({"gpu_image": "r/clip-index-gpu:latest"}, "latest"),
])
def test_bad_settings_are_refused_before_compiling(tmp_path: Path, change: dict[str, Any],
                                                   message: str) -> None:
    import dataclasses

    with pytest.raises(ValueError, match=message.replace("'", ".")):
        compile_all(str(tmp_path), dataclasses.replace(SETTINGS, **change))
    assert not list(tmp_path.iterdir())


def test_kubeflow_settings_are_checked() -> None:
    pytest.importorskip("kfp.kubernetes")
    from clip_index.pipelines.kubeflow import KubeflowSettings, make_kubeflow_pipeline

    with pytest.raises(ValueError, match="toleration_effect='Never'"):
        make_kubeflow_pipeline(SETTINGS, KubeflowSettings(toleration_effect="Never"))
