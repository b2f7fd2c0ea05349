"""`clip-index submit` offline: the real aiplatform PipelineJob with anonymous credentials and its
API client replaced; the request it would send is asserted."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("google.cloud.aiplatform")

from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud.aiplatform import pipeline_jobs  # noqa: E402
from google.cloud.aiplatform.compat.types import pipeline_job as gca_pipeline_job  # noqa: E402
from google.cloud.aiplatform.compat.types import pipeline_state  # noqa: E402

from clip_index.cli import build_parser  # noqa: E402
from clip_index.launch import submit  # noqa: E402

PROJECT, REGION = "my-proj", "us-central1"
REPO = "us-central1-docker.pkg.dev/my-proj/clip-index"


class FakeApiClient:
    """Stands in for Vertex AI's PipelineService: records the create request, and answers
    get requests with the states it is given."""

    def __init__(self, states: list[str] | None = None) -> None:
        self.created: list[dict[str, Any]] = []
        self.states = list(states or [])

    def create_pipeline_job(self, parent: str, pipeline_job: Any, pipeline_job_id: str,
                            timeout: Any = None) -> Any:
        self.created.append({"parent": parent, "job": pipeline_job, "id": pipeline_job_id})
        made = gca_pipeline_job.PipelineJob(pipeline_job)
        made.name = f"{parent}/pipelineJobs/{pipeline_job_id}"
        made.state = pipeline_state.PipelineState.PIPELINE_STATE_PENDING
        return made

    def get_pipeline_job(self, name: str, retry: Any = None) -> Any:
        job = gca_pipeline_job.PipelineJob(self.created[-1]["job"])
        job.name = name
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        job.state = getattr(pipeline_state.PipelineState, state)
        job.job_detail.task_details.append(gca_pipeline_job.PipelineTaskDetail(
            task_name="embed-images",
            state=gca_pipeline_job.PipelineTaskDetail.State.RUNNING))
        return job


@pytest.fixture(autouse=True)
def no_bucket_creation(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(pipeline_jobs.gcs_utils,
                        "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kw: calls.append(kw))
    return calls


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["submit", "--project", PROJECT, "--region", REGION,
                                      "--pipeline-root", "gs://bucket/root", *argv])


def test_submit_sends_template_parameters_account_labels_network(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "params.yaml"
    config.write_text("dataset: gs://bucket/datacomp/\nshard_size: 5000\nlimit: 10\n")
    args = parse("--image-repo", REPO, "--image-tag", "abc123", "--gpu-type", "NVIDIA_TESLA_T4",
                 "--config", str(config), "--param", "output_dir=gs://bucket/out",
                 "--param", "limit=100", "--param", "allow_private_networks=false",
                 "--service-account", "runner@my-proj.iam.gserviceaccount.com",
                 "--network", "projects/123/global/networks/vpc",
                 "--labels", "team=search,env=dev", "--job-id", "run-1")
    client = FakeApiClient()
    job = submit.run_submit(args, credentials=AnonymousCredentials(), api_client=client)

    (request,) = client.created
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    assert request["id"] == "run-1"
    sent = request["job"]
    assert sent.service_account == "runner@my-proj.iam.gserviceaccount.com"
    assert sent.network == "projects/123/global/networks/vpc"
    assert dict(sent.labels) == {"team": "search", "env": "dev"}
    assert sent.runtime_config.gcs_output_directory == "gs://bucket/root"
    values = {k: v for k, v in sent.runtime_config.parameter_values.items()}
    assert values["dataset"] == "gs://bucket/datacomp/"
    assert values["output_dir"] == "gs://bucket/out"
    assert values["limit"] == 100  # --param wins over --config, typed as the template says
    assert values["shard_size"] == 5000
    assert values["allow_private_networks"] is False
    # the template compiled with the flags: pushed images, T4 on the embed step
    spec = sent.pipeline_spec
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {f"{REPO}/clip-index-cpu:abc123", f"{REPO}/clip-index-gpu:abc123"}
    accelerators = [e["container"]["resources"]["accelerator"] for e in executors.values()
                    if "accelerator" in e["container"].get("resources", {})]
    assert [a.get("resourceType", a.get("type")) for a in accelerators] == ["NVIDIA_TESLA_T4"]
    # caching left to the template (download/embed cached: a resubmit skips finished shards)
    assert job.resource_name.endswith("/pipelineJobs/run-1")
    out = capsys.readouterr().out
    assert out == ""
    assert submit.console_url(job) == (
        f"https://console.cloud.google.com/vertex-ai/locations/{REGION}/pipelines/runs/run-1"
        f"?project={PROJECT}")


def _task_caching(spec: Any) -> dict[str, bool]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {name: bool(t.get("cachingOptions", {}).get("enableCache", False))
            for name, t in tasks.items()}


def test_no_cache_turns_caching_off_for_every_task(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    compile_pipeline("clip-index", str(tmp_path), PipelineSettings())
    (tmp_path / "clip-index.yaml").rename(template)
    base = ["--template", str(template), "--param", "dataset=org/name",
            "--param", "output_dir=gs://b/o"]
    cached = FakeApiClient()
    submit.run_submit(parse(*base), credentials=AnonymousCredentials(), api_client=cached)
    caching = _task_caching(cached.created[0]["job"].pipeline_spec)
    assert caching["download-images"] and caching["embed-images"]
    assert not caching["write-embeddings"]  # it publishes to output_dir: never a cache hit

    fresh = FakeApiClient()
    submit.run_submit(parse(*base, "--no-cache"), credentials=AnonymousCredentials(),
                      api_client=fresh)
    assert not any(_task_caching(fresh.created[0]["job"].pipeline_spec).values())


@pytest.mark.parametrize("argv, message", [
    (["--param", "datset=x"], "unknown pipeline parameters ['datset']"),
    (["--param", "dataset=org/name"], "missing required pipeline parameters ['output_dir']"),
    (["--param", "limit=ten"], "limit='ten': expected number_integer"),
    (["--param", "output_dir=out/index"], "expected a gs:// folder"),
    (["--param", "resize_mode=stretch"], "resize_mode='stretch'"),
    (["--labels", "Team=x"], "label 'Team=x'"),
])
def test_bad_input_fails_before_any_request(tmp_path: Path, argv: list[str],
                                            message: str) -> None:
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    template = compile_pipeline("clip-index", str(tmp_path), PipelineSettings())
    base = {"dataset": "org/name", "output_dir": "gs://b/o"}
    given = {a.split("=")[0] for a in argv[1::2]}
    params = [f"{k}={v}" for k, v in base.items() if k not in given and argv[0] == "--param"
              and "missing" not in message]
    if argv[0] == "--labels":
        params = [f"{k}={v}" for k, v in base.items()]
    extra = [x for p in params for x in ("--param", p)]
    client = FakeApiClient()
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        submit.run_submit(parse("--template", template, *extra, *argv),
                          credentials=AnonymousCredentials(), api_client=client)
    assert client.created == []


def test_kubeflow_variant_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    pytest.importorskip("kfp.kubernetes")
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    template = compile_pipeline("clip-index-kubeflow", str(tmp_path), PipelineSettings())
    with pytest.raises(ValueError, match="Kubeflow variant"):
        submit.template_parameters(template)


def test_compiling_for_submit_needs_the_image_repo() -> None:
    with pytest.raises(ValueError, match="--image-repo"):
        submit.run_submit(parse("--param", "dataset=a/b", "--param", "output_dir=gs://b/o"),
                          credentials=AnonymousCredentials(), api_client=FakeApiClient())


def test_wait_streams_state_changes_until_the_run_ends(tmp_path: Path) -> None:
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    template = compile_pipeline("clip-index", str(tmp_path), PipelineSettings())
    client = FakeApiClient(["PIPELINE_STATE_RUNNING"] * 4 + ["PIPELINE_STATE_FAILED"])
    job = submit.run_submit(parse("--template", template, "--param", "dataset=a/b",
                                  "--param", "output_dir=gs://b/o"),
                            credentials=AnonymousCredentials(), api_client=client)
    lines: list[str] = []
    assert submit.wait(job, poll_s=0, echo=lines.append) == "PIPELINE_STATE_FAILED"
    assert [line.split(" ", 1)[1] for line in lines] == [
        "run: PIPELINE_STATE_RUNNING", "  embed-images: RUNNING", "run: PIPELINE_STATE_FAILED"]


def test_labels_parse() -> None:
    assert submit.parse_labels("a=1, b-c=x_y,") == {"a": "1", "b-c": "x_y"}
    with pytest.raises(ValueError, match="'novalue'"):
        submit.parse_labels("novalue")


def test_template_is_read_as_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text(yaml.safe_dump({"a": 1}))
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        submit.template_parameters(str(bad))
