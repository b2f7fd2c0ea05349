"""`clip-index submit` offline: the real aiplatform PipelineJob with anonymous credentials and its
API client replaced; the request it would send is asserted. The preflight's calls go through
Google's real clients to tests/support/google_cloud.py (the tests that are not about it pass
--no-preflight, and then nothing is requested)."""

from __future__ import annotations

import argparse
import re
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
from clip_index.launch.preflight import PreflightFailed  # noqa: E402
from tests.support.google_cloud import BUCKET, PROJECT, REGION, REPO, FakeGoogleCloud  # noqa: E402


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
        for task_id in (11, 12):  # two iterations of one loop: same name, their own ids
            job.job_detail.task_details.append(gca_pipeline_job.PipelineTaskDetail(
                task_id=task_id, task_name="embed-images",
                state=gca_pipeline_job.PipelineTaskDetail.State.RUNNING))
        return job


@pytest.fixture(autouse=True)
def no_bucket_creation(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(pipeline_jobs.gcs_utils,
                        "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kw: calls.append(kw))
    return calls


@pytest.fixture(autouse=True)
def fingerprinted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No listing of gs:// or the Hub from here: the dataset's fingerprint is its name; the
    datasets fingerprinted are recorded."""
    from clip_index.launch import fingerprint

    calls: list[str] = []
    monkeypatch.setattr(fingerprint, "dataset_fingerprint",
                        lambda dataset: calls.append(dataset) or f"fp:{dataset}")
    return calls


@pytest.fixture(autouse=True)
def cloud(monkeypatch: pytest.MonkeyPatch) -> FakeGoogleCloud:
    """A project where every preflight check passes; no request leaves the process."""
    import requests.adapters

    fake = FakeGoogleCloud().healthy()
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", fake.send)
    return fake


def parse(*argv: str, preflight: bool = False) -> argparse.Namespace:
    return build_parser().parse_args(["submit", "--project", PROJECT, "--region", REGION,
                                      "--pipeline-root", f"gs://{BUCKET}/root", *argv,
                                      *([] if preflight else ["--no-preflight"])])


def test_submit_sends_template_parameters_account_labels_network(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cloud: FakeGoogleCloud) -> None:
    config = tmp_path / "params.yaml"
    config.write_text("dataset: gs://bucket/datacomp/\nshard_size: 5000\nlimit: 10\n")
    args = parse("--image-repo", REPO, "--image-tag", "abc123", "--gpu-type", "NVIDIA_TESLA_T4",
                 "--config", str(config), "--param", "output_dir=gs://bucket/out",
                 "--param", "limit=100", "--param", "allow_private_networks=false",
                 "--service-account", "runner@my-proj.iam.gserviceaccount.com",
                 "--network", "projects/123/global/networks/vpc",
                 "--labels", "team=search,env=dev", "--job-id", "run-1", preflight=True)
    client = FakeApiClient()
    lines: list[str] = []
    job = submit.run_submit(args, credentials=AnonymousCredentials(), api_client=client,
                            echo=lines.append)

    (request,) = client.created
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    assert request["id"] == "run-1"
    sent = request["job"]
    assert sent.service_account == "runner@my-proj.iam.gserviceaccount.com"
    assert sent.network == "projects/123/global/networks/vpc"
    assert dict(sent.labels) == {"team": "search", "env": "dev"}
    assert sent.runtime_config.gcs_output_directory == f"gs://{BUCKET}/root"
    values = {k: v for k, v in sent.runtime_config.parameter_values.items()}
    assert values["dataset"] == "gs://bucket/datacomp/"
    assert values["output_dir"] == "gs://bucket/out"
    assert values["limit"] == 100  # --param wins over --config, typed as the template says
    assert values["shard_size"] == 5000
    assert values["allow_private_networks"] is False
    # the load step's cache key follows the dataset's content (launch/fingerprint.py)
    assert values["dataset_fingerprint"] == "fp:gs://bucket/datacomp/"
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
    assert out == ""  # what run_submit says goes to echo (the CLI's print)
    preflight, summary = lines
    assert preflight.startswith("preflight:\n") and "FAIL" not in preflight
    # the fake project lists no T4 quota: "unknown", which does not stop the submit
    assert "custom_model_training_nvidia_t4_gpus: no value for us-central1" in preflight
    assert "rows:           100 (--param limit)" in summary
    # limit 100, shard_size 5000: one shard, so one task of each loop runs
    # the loops by their keys (the groups' loop holds the download loop and the embed task)
    assert re.search(r"loop for-loop-\d+/for-loop-\d+: up to 32 tasks at once; 1 for 1 "
                     r"shard\(s\) \(download-images\)", summary), summary
    assert re.search(r"loop for-loop-\d+: up to 8 tasks at once; 1 for 1 shard\(s\) "
                     r"\(embed-images\)", summary), summary
    assert "embed task:     6 vCPU, 24G, 1x NVIDIA_TESLA_T4" in summary
    assert "estimate:       " in summary and " h wall, " in summary
    assert f"pipeline root:  gs://{BUCKET}/root" in summary
    assert "output folder:  gs://bucket/out" in summary
    assert cloud.calls  # the preflight asked the (fake) services
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
                                            message: str, fingerprinted: list[str]) -> None:
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
    assert fingerprinted == []  # nothing listed for a submit that was going to fail


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


def test_a_failed_preflight_stops_before_the_run_is_created(
        tmp_path: Path, cloud: FakeGoogleCloud, fingerprinted: list[str]) -> None:
    cloud.healthy(gpus=0)
    client = FakeApiClient()
    with pytest.raises(PreflightFailed, match=r"1 check\(s\) failed \(quota\).*--no-preflight"):
        submit.run_submit(parse("--image-repo", REPO, "--image-tag", "abc",
                                "--service-account", "runner@my-proj.iam.gserviceaccount.com",
                                "--param", "dataset=a/b", "--param", "output_dir=gs://b/o",
                                preflight=True),
                          credentials=AnonymousCredentials(), api_client=client)
    assert client.created == []
    assert fingerprinted == []  # the dataset is not listed for a run that will not start


def test_summary_says_when_the_load_step_will_not_be_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without huggingface_hub (it is in the cloud extra now) a Hub dataset cannot be
    fingerprinted: the run goes on with a one-off value, and the summary says what that costs."""
    from clip_index.launch import fingerprint

    def no_hub(dataset: str) -> str:
        raise ModuleNotFoundError("No module named 'huggingface_hub'")

    monkeypatch.setattr(fingerprint, "dataset_fingerprint", no_hub)
    lines: list[str] = []
    client = FakeApiClient()
    submit.run_submit(parse("--image-repo", REPO, "--param", "dataset=org/name",
                            "--param", "output_dir=gs://b/o"),
                      credentials=AnonymousCredentials(), api_client=client, echo=lines.append)
    sent = client.created[0]["job"].runtime_config.parameter_values
    assert str(sent["dataset_fingerprint"]).startswith("unique:")
    assert "load cache:     OFF for this run" in lines[-1]


def test_no_preflight_asks_nothing(tmp_path: Path, cloud: FakeGoogleCloud) -> None:
    client = FakeApiClient()
    submit.run_submit(parse("--image-repo", REPO, "--param", "dataset=a/b",
                            "--param", "output_dir=gs://b/o"),
                      credentials=AnonymousCredentials(), api_client=client)
    assert len(client.created) == 1 and cloud.calls == []


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
        "run: PIPELINE_STATE_RUNNING", "  embed-images #11: RUNNING",
        "  embed-images #12: RUNNING", "run: PIPELINE_STATE_FAILED"]


def test_labels_parse() -> None:
    assert submit.parse_labels("a=1, b-c=x_y,") == {"a": "1", "b-c": "x_y"}
    with pytest.raises(ValueError, match="'novalue'"):
        submit.parse_labels("novalue")


def test_template_is_read_as_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text(yaml.safe_dump({"a": 1}))
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        submit.template_parameters(str(bad))


# --- templates in Artifact Registry (where Cloud Build's upload-registry step puts them) -------

AR_URL = f"https://{REGION}-kfp.pkg.dev/{PROJECT}/clip-index-pipelines/clip-index"


class FakeRegistry:
    """Stands in for Artifact Registry's KFP endpoint behind urllib (aiplatform's yaml_utils
    reads https templates with `urllib.request.urlopen`): serves `body` for every URL under
    AR_URL, or answers `status`; records the URL and Authorization header of each request."""

    def __init__(self, body: bytes = b"", status: int = 200) -> None:
        self.body, self.status = body, status
        self.requests: list[tuple[str, str | None]] = []

    def urlopen(self, req: Any, *args: Any, **kwargs: Any) -> Any:
        import io
        import urllib.error

        url = req.full_url if hasattr(req, "full_url") else req
        self.requests.append((url, req.get_header("Authorization")))
        if self.status != 200:
            raise urllib.error.HTTPError(url, self.status, "Forbidden", None, None)  # type: ignore[arg-type]
        assert url.startswith(AR_URL + "/"), url
        return io.BytesIO(self.body)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRegistry:
    from google.cloud.aiplatform.utils import yaml_utils

    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    body = Path(compile_pipeline("clip-index", str(tmp_path), PipelineSettings())).read_bytes()
    fake = FakeRegistry(body)
    monkeypatch.setattr(yaml_utils.request, "urlopen", fake.urlopen)
    return fake


@pytest.mark.parametrize("version", ["latest", "0123abc",
                                     "sha256:" + "ab" * 32])
def test_submit_starts_the_template_cloud_build_uploaded(registry: FakeRegistry,
                                                         version: str) -> None:
    from google.oauth2.credentials import Credentials

    url = f"{AR_URL}/{version}"
    client = FakeApiClient()
    submit.run_submit(parse("--template", url, "--param", "dataset=org/name",
                            "--param", "output_dir=gs://b/o"),
                      credentials=Credentials(token="ya29.token"), api_client=client)
    (request,) = client.created
    sent = request["job"]
    assert sent.template_uri == url  # the run links to the registry version it came from
    assert sent.pipeline_spec["pipelineInfo"]["name"] == "clip-index"
    assert sent.runtime_config.parameter_values["dataset_fingerprint"] == "fp:org/name"
    # read twice (our checks, then PipelineJob), each time with the caller's token
    assert registry.requests == [(url, "Bearer ya29.token")] * 2


def test_registry_errors_say_what_to_do(registry: FakeRegistry) -> None:
    registry.status = 403
    client = FakeApiClient()
    with pytest.raises(ValueError, match=r"HTTP 403 .*roles/artifactregistry.reader"):
        submit.run_submit(parse("--template", f"{AR_URL}/latest", "--param", "dataset=a/b",
                                "--param", "output_dir=gs://b/o"),
                          credentials=AnonymousCredentials(), api_client=client)
    assert client.created == []


def test_registry_kubeflow_variant_is_refused(registry: FakeRegistry, tmp_path: Path) -> None:
    pytest.importorskip("kfp.kubernetes")
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    registry.body = Path(compile_pipeline("clip-index-kubeflow", str(tmp_path),
                                          PipelineSettings())).read_bytes()
    with pytest.raises(ValueError, match="Kubeflow variant"):
        submit.template_parameters(f"{AR_URL}/latest", PROJECT, AnonymousCredentials())


@pytest.mark.parametrize("template", [
    f"https://{REGION}-docker.pkg.dev/{PROJECT}/clip-index/clip-index-cpu:abc",  # images, not KFP
    "http://example.com/clip-index.yaml",
])
def test_a_template_url_aiplatform_refuses_is_refused_first(registry: FakeRegistry,
                                                            template: str) -> None:
    with pytest.raises(ValueError, match="expected an Artifact Registry URL"):
        submit.run_submit(parse("--template", template, "--param", "dataset=a/b",
                                "--param", "output_dir=gs://b/o"),
                          credentials=AnonymousCredentials(), api_client=FakeApiClient())
    assert registry.requests == []


def test_missing_local_template_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        submit.run_submit(parse("--template", str(tmp_path / "nope.yaml"), "--param",
                                "dataset=a/b", "--param", "output_dir=gs://b/o"),
                          credentials=AnonymousCredentials(), api_client=FakeApiClient())
