"""The spec checker: each backend rule refuses a small pipeline written to break it (with a
message naming the task, the input and the rule's source), every template the project ships
passes at the widest settings `validate()` accepts, and compile writes no breaking template."""

import functools
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output

from clip_index.launch import spec_check
from clip_index.launch.compiler import compile_all, compile_pipeline
from clip_index.pipelines import PIPELINES, PipelineSettings


def _compile(pipeline, tmp_path: Path) -> dict:
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return yaml.safe_load(path.read_text())


def _rules(spec: dict) -> list[spec_check.Violation]:
    return spec_check.check_spec(spec)


# small components named like the project's steps (the design rules go by component name)
component = functools.partial(dsl.component, base_image="python:3.11")
@component
def plan_units(n: int) -> list[dict]:
    return [{"unit": i, "shards": [i]} for i in range(n)]


@component
def download_images(unit: dict, images: Output[Dataset]) -> None:
    pass


@component
def download_part(part: int, images: Output[Dataset]) -> None:
    pass


@component
def embed_images(images: Input[list[Dataset]], unit: dict, embeddings: Output[Dataset]) -> None:
    pass


@component
def embed_all(images: Input[list[Dataset]], embeddings: Output[Dataset]) -> None:
    pass


@component
def write_embeddings(embeddings: Input[list[Dataset]], output_dir: str) -> None:
    pass


@component
def use_one(image: Input[Dataset], unit: dict) -> None:
    pass


def test_todays_units_list_shape_is_refused_with_task_input_and_source(tmp_path: Path) -> None:
    """The embed loop over a bare `list` pipeline input, inside a nested pipeline that takes
    the collected images: the shape the issue found (STRUCT fed STRING, list into a DAG)."""

    @dsl.pipeline(name="embed-units")
    def embed_units(images: Input[list[Dataset]], units: list) -> None:
        with dsl.ParallelFor(units) as unit:
            embed_images(images=images, unit=unit).set_retry(2)

    @dsl.pipeline(name="p")
    def p(n: int = 2) -> None:
        plan = plan_units(n=n)
        with dsl.ParallelFor(plan.output) as unit:
            download = download_images(unit=unit).set_retry(2)
        embed_units(images=dsl.Collected(download.outputs["images"]), units=plan.output)

    violations = _rules(_compile(p, tmp_path))
    typed = [v for v in violations if v.rule == "input-type"]
    assert len(typed) == 1 and typed[0].input == "unit"
    assert typed[0].task.startswith("root/embed-units/for-loop-")
    assert typed[0].task.endswith("/embed-images")
    assert "declared STRUCT, fed STRING" in str(typed[0])
    assert "backend/src/v2/driver/resolve.go" in str(typed[0])
    assert {v.rule for v in violations} >= {"input-type", "dag-artifact-list"}
    with pytest.raises(spec_check.SpecError, match=r"task 'root/embed-units/for-loop-\d+/"
                                                   r"embed-images', input 'unit'"):
        path = tmp_path / "p.yaml"
        spec_check.require_valid(str(path))


def test_a_loop_over_a_field_of_a_loop_item_is_typed_string(tmp_path: Path) -> None:
    @component
    def groups() -> list[dict]:
        return [{"units": [{"unit": 0}]}]

    @dsl.pipeline(name="p")
    def p() -> None:
        with dsl.ParallelFor(groups().output) as group, \
                dsl.ParallelFor(group.units) as unit:
            download_images(unit=unit).set_retry(1)

    typed = [v for v in _rules(_compile(p, tmp_path)) if v.rule == "input-type"]
    assert [v.input for v in typed] == ["unit"] and "fed STRING" in typed[0].message


def test_a_loop_over_artifacts_is_refused(tmp_path: Path) -> None:
    @dsl.pipeline(name="inner")
    def inner(images: Input[list[Dataset]]) -> None:
        with dsl.ParallelFor(images) as image:
            use_one(image=image, unit={"unit": 0})

    @dsl.pipeline(name="p")
    def p() -> None:
        with dsl.ParallelFor([0, 1]) as part:
            download = download_part(part=part)
        inner(images=dsl.Collected(download.outputs["images"]))

    rules = {v.rule for v in _rules(_compile(p, tmp_path))}
    assert {"artifact-iterator", "dag-artifact-list"} <= rules
    message = next(str(v) for v in _rules(_compile(p, tmp_path))
                   if v.rule == "artifact-iterator")
    assert "artifact iterator not implemented yet" in message and "argocompiler" in message


def test_a_list_of_artifacts_into_a_nested_pipeline_is_refused(tmp_path: Path) -> None:
    @dsl.pipeline(name="inner")
    def inner(images: Input[list[Dataset]]) -> None:
        embed_all(images=images).set_retry(1)

    @dsl.pipeline(name="p")
    def p() -> None:
        with dsl.ParallelFor([0, 1]) as part:
            download = download_part(part=part)
        inner(images=dsl.Collected(download.outputs["images"]))

    violations = _rules(_compile(p, tmp_path))
    assert [(v.rule, v.task, v.input) for v in violations] == [
        ("dag-artifact-list", "root/inner", "images")]
    assert "kubeflow/pipelines#13900" in str(violations[0])


@pytest.mark.parametrize("widths, total", [((99,), 100), ((100,), 101), ((60, 41), 101),
                                            ((40, 40), 80)])
def test_artifacts_collected_into_one_task_are_counted_against_100(
        tmp_path: Path, widths: tuple[int, ...], total: int) -> None:
    @component
    def take(a: Input[list[Dataset]], b: Input[list[Dataset]]) -> None:
        pass

    @dsl.pipeline(name="p")
    def p() -> None:
        outs = []
        for width in widths:
            with dsl.ParallelFor(list(range(width))) as part:
                outs.append(download_part(part=part).outputs["images"])
        if len(outs) == 1:
            embed_all(images=dsl.Collected(outs[0])).set_retry(1)
        else:
            take(a=dsl.Collected(outs[0]), b=dsl.Collected(outs[1]))

    violations = [v for v in _rules(_compile(p, tmp_path)) if v.rule == "max-artifacts"]
    if total <= 100:
        assert violations == []
    else:
        assert len(violations) == 1 and f"handles {total} artifacts" in violations[0].message
        assert "Maximum allowed: 100" in str(violations[0])


def test_nested_collected_loops_multiply(tmp_path: Path) -> None:
    """A Collected of an outer loop whose body collects an inner loop: 11 × 10 = 110."""

    @dsl.pipeline(name="p")
    def p() -> None:
        with dsl.ParallelFor(list(range(11))), dsl.ParallelFor(list(range(10))) as part:
            download = download_part(part=part)
        embed_all(images=dsl.Collected(download.outputs["images"])).set_retry(1)

    try:
        spec = _compile(p, tmp_path)
    except Exception as exc:  # kfp refuses a Collected of a doubly nested loop: also fine
        pytest.skip(f"kfp {exc}")
    violations = [v for v in _rules(spec) if v.rule == "max-artifacts"]
    assert violations and "handles 111 artifacts" in violations[0].message  # + its output


def test_a_collected_loop_over_a_task_output_cannot_be_bounded(tmp_path: Path) -> None:
    @dsl.pipeline(name="p")
    def p(n: int = 2) -> None:
        with dsl.ParallelFor(plan_units(n=n).output) as unit:
            download = download_images(unit=unit).set_retry(1)
        embed_all(images=dsl.Collected(download.outputs["images"])).set_retry(1)

    violations = _rules(_compile(p, tmp_path))
    assert [(v.rule, v.task.rsplit("/", 1)[-1], v.input) for v in violations] == [
        ("unbounded-collect", "embed-all", "images")]


def test_gpu_retry_and_cache_rules(tmp_path: Path) -> None:
    @dsl.pipeline(name="p")
    def p(output_dir: str = "/o") -> None:
        with dsl.ParallelFor([0]):
            with dsl.ParallelFor([0]) as part:
                download = download_part(part=part).set_accelerator_type(
                    "NVIDIA_L4").set_accelerator_limit(1)
            embed = embed_images(images=dsl.Collected(download.outputs["images"]),
                                 unit={"unit": 0})  # no retry
        write = write_embeddings(embeddings=dsl.Collected(embed.outputs["embeddings"]),
                                 output_dir=output_dir)
        write.set_caching_options(True)

    found = {(v.rule, v.task.rsplit("/", 1)[-1]) for v in _rules(_compile(p, tmp_path))}
    assert found == {("gpu-only-embed", "download-part"), ("retry", "embed-images"),
                     ("no-cache-publish", "write-embeddings")}


WIDEST = [(99, 99), (99, 1), (1, 1), (100, 7), (100, 2), (1, 99)]


@pytest.mark.parametrize("downloads, groups", WIDEST)
def test_every_template_passes_at_the_widest_accepted_settings(
        tmp_path: Path, downloads: int, groups: int) -> None:
    settings = PipelineSettings(download_parallelism=downloads, embed_parallelism=groups,
                                gpu_count=1)
    settings.validate()
    for path in compile_all(str(tmp_path), settings):  # compile runs the checker itself
        assert spec_check.check_file(path) == [], path
    spec = yaml.safe_load((tmp_path / "clip-index.yaml").read_text())
    widths = sorted(t["iteratorPolicy"]["parallelismLimit"] for c in [
        spec["root"], *spec["components"].values()] for t in c.get("dag", {}).get(
            "tasks", {}).values() if "iteratorPolicy" in t)
    assert widths == sorted([groups, settings.parts])
    assert settings.download_tasks >= downloads and settings.parts < 100


@pytest.mark.parametrize("downloads, groups", [(100, 1), (100, 100), (1, 100)])
def test_widths_whose_task_would_handle_101_artifacts_are_refused(downloads: int,
                                                                  groups: int) -> None:
    with pytest.raises(ValueError, match="more than the 100 Vertex AI accepts in one task"):
        PipelineSettings(download_parallelism=downloads, embed_parallelism=groups).validate()


def test_a_named_loop_whose_outputs_are_collected_is_refused(tmp_path: Path) -> None:
    """kubeflow/pipelines#13239: a loop given `name=` is recorded under that name by backends
    before 2.16 but looked up by its key where its outputs are collected."""

    @dsl.pipeline(name="p")
    def p() -> None:
        with dsl.ParallelFor([0, 1], name="units") as part:
            download = download_part(part=part)
        embed_all(images=dsl.Collected(download.outputs["images"])).set_retry(1)

    violations = _rules(_compile(p, tmp_path))
    assert [v.rule for v in violations] == ["loop-name"]
    assert violations[0].task.split("/")[-1].startswith("for-loop-")
    assert "#13239" in str(violations[0]) and "'units'" in violations[0].message


def test_compile_writes_no_template_that_breaks_a_rule(tmp_path: Path, monkeypatch) -> None:
    @dsl.pipeline(name="broken")
    def broken(n: int = 2) -> None:
        with dsl.ParallelFor(plan_units(n=n).output) as unit:
            download = download_images(unit=unit).set_retry(1)
        embed_all(images=dsl.Collected(download.outputs["images"])).set_retry(1)

    monkeypatch.setitem(PIPELINES, "broken", lambda settings: broken)
    with pytest.raises(spec_check.SpecError, match="unbounded-collect"):
        compile_pipeline("broken", str(tmp_path), PipelineSettings())
    assert list(tmp_path.iterdir()) == []


def test_the_kubeflow_variant_keeps_gpu_placement_on_the_embed_task(tmp_path: Path) -> None:
    pytest.importorskip("kfp.kubernetes")
    path = compile_pipeline("clip-index-kubeflow", str(tmp_path), PipelineSettings())
    spec, platform = spec_check.load_documents(path)
    assert platform is not None
    assert spec_check.check_spec(spec, platform) == []
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # moved onto another task, the rule fires
    executors["exec-download-images"] = executors["exec-embed-images"]
    violations = spec_check.check_spec(spec, platform)
    assert [v.rule for v in violations] == ["gpu-only-embed"]
    assert violations[0].task.endswith("download-images")
