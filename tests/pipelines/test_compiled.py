"""The compiled Vertex template: GPU only on embed, pinned images, the two static loops and
what each task receives, retries, display names, typed artifacts and parameter defaults."""

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
        "load-dataset", "download-images", "write-embeddings", "build-index", "report",
        "publish-to-hub")}


def _all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def _loops(spec: dict) -> tuple[dict, dict]:
    """(the outer loop task, in the root DAG; the inner loop task, inside the outer's DAG)."""
    root = spec["root"]["dag"]["tasks"]
    (outer,) = [t for t in root.values() if "parameterIterator" in t]
    body = spec["components"][outer["componentRef"]["name"]]["dag"]["tasks"]
    (inner,) = [t for t in body.values() if "parameterIterator" in t]
    return outer, inner


def test_two_static_loops_whose_widths_come_from_the_settings(spec) -> None:
    """Embed groups outside, download units inside, each over a list fixed at compile time
    (6 downloads in 5 groups: 2 per group, 10 tasks), whatever the dataset; no planning task."""
    outer, inner = _loops(spec)
    assert outer["iteratorPolicy"]["parallelismLimit"] == 5
    assert inner["iteratorPolicy"]["parallelismLimit"] == 2
    assert outer["parameterIterator"]["items"]["raw"] == "[0, 1, 2, 3, 4]"
    assert inner["parameterIterator"]["items"]["raw"] == "[0, 1]"
    assert not any(c.startswith("comp-plan") for c in spec["components"])


def test_retries_caching_and_display_names(spec) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    every = _all_tasks(spec)
    for name in ("download-images", "embed-images"):
        assert every[name]["retryPolicy"]["maxRetryCount"] == 2
        assert every[name]["cachingOptions"]["enableCache"] is True
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    names = {t["taskInfo"]["name"] for dag in dags for t in dag["tasks"].values()}
    assert {"Load dataset", "Download images", "Embed images", "Write embeddings",
            "Build index", "Report"} <= names
    for name in ("write-embeddings", "build-index", "report"):
        assert tasks[name]["cachingOptions"] == {}  # caching off: they write output_dir


def test_each_embed_task_receives_only_its_own_groups_downloads(spec) -> None:
    """The embed task, inside the group loop, collects the inner download loop's artifacts
    (its group's 2); write collects the 5 embed artifacts; no task takes the download loop's
    images but its own group's embed task, and no task takes a list into a nested pipeline."""
    every = _all_tasks(spec)
    comps = spec["components"]
    embed_images = every["embed-images"]["inputs"]["artifacts"]["images"]["taskOutputArtifact"]
    group_dag = next(c["dag"] for c in comps.values()
                     if "embed-images" in c.get("dag", {}).get("tasks", {}))
    inner = group_dag["tasks"][embed_images["producerTask"]]
    assert inner == _loops(spec)[1]  # the download loop of the same group
    assert set(every["embed-images"]["inputs"]["artifacts"]) == {"images"}
    embeddings = every["write-embeddings"]["inputs"]["artifacts"]
    assert set(embeddings) == {"embeddings"}
    assert every[embeddings["embeddings"]["taskOutputArtifact"]["producerTask"]] == \
        _loops(spec)[0]
    for name in ("write-embeddings", "report", "build-index"):  # no image artifacts
        for key, source in every[name]["inputs"].get("artifacts", {}).items():
            producer = source.get("taskOutputArtifact", {}).get("producerTask", "")
            assert "for-loop" not in producer or name == "write-embeddings", (name, key)
    for comp in comps.values():
        if "dag" in comp:
            assert not any(a.get("isArtifactList") for a in comp.get(
                "inputDefinitions", {}).get("artifacts", {}).values())


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
