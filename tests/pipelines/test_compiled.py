"""The compiled Vertex template: GPU only on embed, pinned images, fan-out limit, retries,
display names, typed artifacts and parameter defaults."""

from pathlib import Path

import pytest
import yaml

from clip_index.launch.compiler import compile_all
from clip_index.pipelines import PipelineSettings

SETTINGS = PipelineSettings(cpu_image="reg.example/p/clip-index-cpu:abc123",
                            gpu_image="reg.example/p/clip-index-gpu:abc123",
                            gpu_type="NVIDIA_TESLA_T4", gpu_count=2,
                            download_parallelism=6, embed_parallelism=5)


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
        "load-dataset", "plan-units", "plan-units-2", "download-images", "write-embeddings",
        "build-index", "report", "publish-to-hub")}


def _all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_two_loops_whose_widths_come_from_the_settings(spec) -> None:
    """One loop of download units, one of embed units (inside the embed-units pipeline): their
    widths are the compile-time settings, whatever the dataset, and no loop is wider."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    loops = {t["taskInfo"]["name"]: t["iteratorPolicy"]["parallelismLimit"]
             for dag in dags for t in dag["tasks"].values() if "iteratorPolicy" in t}
    assert loops == {"download-units": 6, "embed-units": 5}
    plans = {t["taskInfo"]["name"]: t["inputs"]["parameters"]["max_units"]["runtimeValue"]
             for dag in dags for t in dag["tasks"].values()
             if t["componentRef"]["name"].startswith("comp-plan-units")}
    assert plans == {"Plan download units": {"constant": 6.0},
                     "Plan embed units": {"constant": 5.0}}


def test_retries_caching_and_display_names(spec) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    every = _all_tasks(spec)
    for name in ("download-images", "embed-images"):
        assert every[name]["retryPolicy"]["maxRetryCount"] == 2
        assert every[name]["cachingOptions"]["enableCache"] is True
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    names = {t["taskInfo"]["name"] for dag in dags for t in dag["tasks"].values()}
    assert {"Load dataset", "Plan download units", "Download images", "Embed units",
            "Plan embed units", "Embed images", "Write embeddings", "Build index",
            "Report"} <= names
    for name in ("write-embeddings", "build-index", "report"):
        assert tasks[name]["cachingOptions"] == {}  # caching off: they write output_dir


def test_embed_loop_takes_the_download_units_as_one_collected_input(spec) -> None:
    """The embed units read the images of every download unit (≤ download_parallelism
    artifacts), and write reads every embed unit's folder (≤ embed_parallelism)."""
    tasks = spec["root"]["dag"]["tasks"]
    images = tasks["embed-units"]["inputs"]["artifacts"]["images"]["taskOutputArtifact"]
    assert "iteratorPolicy" in tasks[images["producerTask"]]
    inputs = spec["components"]["comp-embed-units"]["inputDefinitions"]["artifacts"]
    assert inputs["images"]["isArtifactList"] is True
    embeddings = tasks["write-embeddings"]["inputs"]["artifacts"]["embeddings"]
    assert embeddings["taskOutputArtifact"]["producerTask"] == "embed-units"


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
        ({"download_parallelism": 0}, "download_parallelism"),
        ({"download_parallelism": 101}, "download_parallelism=101.*100 artifacts"),
        ({"embed_parallelism": 500}, "embed_parallelism=500"),
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
