"""The compiled Vertex template: GPU only on embed, pinned images, fan-out limit, retries,
display names, typed artifacts and parameter defaults."""

from pathlib import Path

import pytest
import yaml
from clip_index.pipelines import PipelineSettings

from clip_index.launch.compiler import compile_all

SETTINGS = PipelineSettings(cpu_image="reg.example/p/clip-index-cpu:abc123",
                            gpu_image="reg.example/p/clip-index-gpu:abc123",
                            gpu_type="NVIDIA_TESLA_T4", gpu_count=2, parallelism=5)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compiled")
    paths = compile_all(str(out), SETTINGS)
    path = next(p for p in paths if Path(p).name == "clip-index.yaml")
    return yaml.safe_load(Path(path).read_text())


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def test_gpu_only_on_embed(spec) -> None:
    with_gpu = {name: ex["container"]["resources"]["accelerator"]
                for name, ex in _executors(spec).items()
                if "accelerator" in ex["container"].get("resources", {})}
    assert list(with_gpu) == ["exec-embed-images"]
    assert with_gpu["exec-embed-images"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert with_gpu["exec-embed-images"]["resourceCount"] == "2"


def test_images_pinned_to_the_tag(spec) -> None:
    images = {name: ex["container"]["image"] for name, ex in _executors(spec).items()}
    assert images.pop("exec-embed-images") == "reg.example/p/clip-index-gpu:abc123"
    assert set(images.values()) == {"reg.example/p/clip-index-cpu:abc123"}
    assert set(images) == {f"exec-{step}" for step in (
        "load-dataset", "plan-shards", "download-images", "write-embeddings", "build-index",
        "report", "publish-to-hub")}


def test_parallelism_retries_and_display_names(spec) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    loop = tasks["for-loop-1"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 5
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    for name in ("download-images", "embed-images"):
        assert inner[name]["retryPolicy"]["maxRetryCount"] == 2
    every = {**tasks, **inner}
    names = {t["taskInfo"]["name"] for t in every.values()}
    assert {"Load dataset", "Plan shards", "Download images", "Embed images",
            "Write embeddings", "Build index", "Report"} <= names
    for name in ("write-embeddings", "build-index", "report"):
        assert tasks[name]["cachingOptions"] == {}  # caching off: they write output_dir


def test_artifacts_are_typed(spec) -> None:
    comps = spec["components"]
    outputs = comps["comp-build-index"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["index"]["artifactType"]["schemaTitle"] == "system.Artifact"
    assert comps["comp-report"]["outputDefinitions"]["artifacts"]["report"][
        "artifactType"]["schemaTitle"] == "system.Markdown"
    assert comps["comp-download-images"]["outputDefinitions"]["artifacts"]["images"][
        "artifactType"]["schemaTitle"] == "system.Dataset"


def test_parameter_defaults(spec) -> None:
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["model"]["defaultValue"] == "ViT-B-32"
    assert params["pretrained"]["defaultValue"] == "laion2b_s34b_b79k"
    assert params["resize_mode"]["defaultValue"] == "keep_ratio"
    assert params["allow_private_networks"]["defaultValue"] is False
    assert "defaultValue" not in params["dataset"] and "defaultValue" not in params["output_dir"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"gpu_image": "reg/p/clip-index-gpu:latest"}, "latest"),
        ({"cpu_image": "reg/p/clip-index-cpu"}, "tag"),
        ({"gpu_type": "NVIDIA_TESLA_K9000"}, "gpu_type"),
        ({"gpu_count": -1}, "gpu_count"),
        ({"parallelism": 0}, "parallelism"),
    ],
)
def test_bad_settings_fail_before_compiling(tmp_path, change, needle) -> None:
    settings = PipelineSettings(**{**SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=needle):
        compile_all(str(tmp_path), settings)
    assert list(tmp_path.iterdir()) == []


def test_cpu_only_build_requests_no_gpu(tmp_path) -> None:
    settings = PipelineSettings(**{**SETTINGS.__dict__, "gpu_count": 0})
    path = compile_all(str(tmp_path), settings)[0]
    spec = yaml.safe_load(Path(path).read_text())
    assert not any("accelerator" in ex["container"].get("resources", {})
                   for ex in _executors(spec).values())
