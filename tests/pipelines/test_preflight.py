"""The preflight (`clip-index doctor`, and `submit` before it creates a run), offline: Google's
real client libraries with anonymous credentials, only the HTTP transport answered by
tests/support/google_cloud.py in the services' recorded shapes. Each check: a pass, and its
failure message with what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("google.cloud.cloudquotas_v1")
pytest.importorskip("google.cloud.artifactregistry_v1")
pytest.importorskip("google.cloud.service_usage_v1")

from google.auth.credentials import AnonymousCredentials  # noqa: E402

from clip_index.launch import preflight_checks as checks  # noqa: E402
from clip_index.launch.preflight import (  # noqa: E402
    check_credentials,
    check_template,
    render,
    run_preflight,
)
from clip_index.launch.preflight_template import given_settings  # noqa: E402
from clip_index.launch.preflight_types import FAIL, PASS, UNKNOWN, Context  # noqa: E402
from tests.support.google_cloud import (  # noqa: E402
    BUCKET,
    CPU_QUOTA,
    L4_QUOTA,
    NUMBER,
    PROJECT,
    REGION,
    REPO,
    RUNNER,
    FakeGoogleCloud,
    error,
    quota_info,
)


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> FakeGoogleCloud:
    import requests.adapters

    fake = FakeGoogleCloud().healthy()
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", fake.send)
    return fake


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Vertex AI template compiled with pushed images: 8 embed tasks x 1 L4."""
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    path = compile_pipeline("clip-index", str(tmp_path_factory.mktemp("t")), PipelineSettings(
        cpu_image=f"{REPO}/clip-index-cpu:abc", gpu_image=f"{REPO}/clip-index-gpu:abc"))
    loaded: dict[str, Any] = yaml.safe_load(Path(path).read_text())
    return loaded


def context(spec: dict[str, Any], **kw: Any) -> Context:
    fields: dict[str, Any] = dict(project=PROJECT, region=REGION,
                                  pipeline_root=f"gs://{BUCKET}/root", spec=spec,
                                  service_account=RUNNER, credentials=AnonymousCredentials())
    fields.update(kw)
    return Context(**fields)


def by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


def test_every_check_passes_on_a_ready_project(cloud: FakeGoogleCloud,
                                               spec: dict[str, Any]) -> None:
    results = run_preflight(context(spec))
    assert [(r.name, r.status) for r in results] == [
        (n, PASS) for n in ("template", "credentials", "project", "apis", "bucket", "images",
                            "quota", "roles")]
    text = render(results)
    assert "custom_model_training_nvidia_l4_gpus 8 >= 8" in text
    assert "custom_model_training_cpus 256 >= 224" in text  # 32 download tasks x 7 vCPU
    assert all(method == "GET" or url.endswith("getIamPolicy?%24alt=json%3Benum-encoding%3Dint")
               for method, url in cloud.calls)  # reads only


# --- template: compile flags given beside --template -------------------------------------------

def _args(*argv: str) -> Any:
    from clip_index.cli import build_parser

    return build_parser().parse_args(["doctor", "--project", PROJECT, "--region", REGION,
                                      "--pipeline-root", f"gs://{BUCKET}/r", *argv])


def test_template_flags_that_match_pass(spec: dict[str, Any]) -> None:
    given = given_settings(_args("--template", "t.yaml", "--image-tag", "abc",
                                 "--embed-parallelism", "8", "--gpu-type", "NVIDIA_L4"))
    assert given == {"image_tag": "abc"}  # the others are the defaults
    assert check_template(context(spec, given_settings=given)).status == PASS


def test_template_drift_names_each_flag(spec: dict[str, Any]) -> None:
    given = given_settings(_args("--template", "t.yaml", "--image-tag", "def",
                                 "--gpu-type", "NVIDIA_TESLA_T4", "--embed-parallelism", "2"))
    result = check_template(context(spec, given_settings=given))
    assert result.status == FAIL
    assert f"--image-tag: 'def' given, the template runs {REPO}/clip-index-cpu:abc" in \
        result.detail
    assert "--gpu-type: 'NVIDIA_TESLA_T4' given, the template was compiled with 'NVIDIA_L4'" \
        in result.detail
    assert "--embed-parallelism: 2 given, the template was compiled with 8" in result.detail
    assert "submit without --template" in result.fix


# --- credentials: google.auth.default() as it runs on a user's machine --------------------------

@pytest.fixture
def no_gcloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return tmp_path


def _user_credentials(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "id.apps",
                                "client_secret": "secret", "refresh_token": "1//refresh"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))


def test_credentials_pass_when_they_refresh(cloud: FakeGoogleCloud, no_gcloud: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            spec: dict[str, Any]) -> None:
    _user_credentials(no_gcloud / "adc.json", monkeypatch)
    cloud.on("POST", r"oauth2\.googleapis\.com/token",
             {"access_token": "ya29.fresh", "expires_in": 3599, "token_type": "Bearer"})
    ctx = context(spec, credentials=None)
    assert check_credentials(ctx).status == PASS
    assert ctx.credentials.token == "ya29.fresh"  # the later checks use them


def test_no_credentials_say_how_to_log_in(cloud: FakeGoogleCloud, no_gcloud: Path,
                                          spec: dict[str, Any]) -> None:
    results = by_name(run_preflight(context(spec, credentials=None)))
    assert results["credentials"].status == FAIL
    assert "no application-default credentials" in results["credentials"].detail
    assert results["credentials"].fix == "gcloud auth application-default login"
    assert results["quota"].status == UNKNOWN  # not tried without credentials
    assert "the credentials check did not pass" in results["quota"].detail
    assert cloud.calls == []


def test_revoked_credentials_say_how_to_log_in(cloud: FakeGoogleCloud, no_gcloud: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               spec: dict[str, Any]) -> None:
    _user_credentials(no_gcloud / "adc.json", monkeypatch)
    cloud.on("POST", r"oauth2\.googleapis\.com/token",
             {"error": "invalid_grant", "error_description": "Token has been expired or "
                                                             "revoked."}, status=400)
    result = check_credentials(context(spec, credentials=None))
    assert result.status == FAIL and "expired or revoked" in result.detail
    assert result.fix == "gcloud auth application-default login"


# --- project, APIs -----------------------------------------------------------------------------

def test_unknown_project_fails_and_stops_the_cloud_checks(cloud: FakeGoogleCloud,
                                                          spec: dict[str, Any]) -> None:
    cloud.on("GET", rf"/v3/projects/{PROJECT}\b", error(
        403, "PERMISSION_DENIED", "Permission denied on resource project my-proj."), 403)
    results = by_name(run_preflight(context(spec)))
    assert results["project"].status == FAIL
    assert "project 'my-proj' does not exist or you cannot see it" in results["project"].detail
    assert "gcloud projects list" in results["project"].fix
    assert {results[n].status for n in ("apis", "bucket", "images", "quota", "roles")} == \
        {UNKNOWN}


def test_an_api_off_on_the_quota_project_is_not_a_missing_project(
        cloud: FakeGoogleCloud, spec: dict[str, Any]) -> None:
    """403 SERVICE_DISABLED (Resource Manager off where the credentials bill) says nothing
    about the project: unknown, with the command that turns the API on; the run goes on."""
    body = error(403, "PERMISSION_DENIED", "Cloud Resource Manager API has not been used")
    body["error"]["details"] = [{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
        "domain": "googleapis.com",
        "metadata": {"service": "cloudresourcemanager.googleapis.com"}}]
    cloud.on("GET", rf"/v3/projects/{PROJECT}\b", body, 403)
    result = checks.check_project(context(spec))
    assert result.status == UNKNOWN
    assert result.fix == "gcloud services enable cloudresourcemanager.googleapis.com"


def test_a_deleted_project_fails(cloud: FakeGoogleCloud, spec: dict[str, Any]) -> None:
    cloud.on("GET", rf"/v3/projects/{PROJECT}\b", {"name": f"projects/{NUMBER}",
                                                    "state": "DELETE_REQUESTED"})
    result = checks.check_project(context(spec))
    assert result.status == FAIL and "DELETE_REQUESTED" in result.detail
    assert result.fix.startswith(f"`gcloud projects undelete {PROJECT}`")


def test_disabled_apis_are_named_with_the_enable_command(cloud: FakeGoogleCloud,
                                                         spec: dict[str, Any]) -> None:
    cloud.on("GET", r"services:batchGet", {"services": [
        {"name": f"projects/{NUMBER}/services/{api}", "config": {"name": api},
         "state": "ENABLED" if api != "aiplatform.googleapis.com" else "DISABLED"}
        for api in checks.RUN_APIS]})
    ctx = context(spec, project_number=NUMBER)
    result = checks.check_apis(ctx)
    assert result.status == FAIL
    assert result.detail == "not enabled: aiplatform.googleapis.com"
    assert result.fix == f"gcloud services enable aiplatform.googleapis.com --project {PROJECT}"


def test_apis_unreadable_is_unknown_not_a_failure(cloud: FakeGoogleCloud,
                                                  spec: dict[str, Any]) -> None:
    cloud.on("GET", r"services:batchGet", error(
        403, "PERMISSION_DENIED", "Permission 'serviceusage.services.get' denied"), 403)
    results = by_name(run_preflight(context(spec)))
    assert results["apis"].status == UNKNOWN
    assert "serviceusage.services.get" in results["apis"].detail
    assert results["quota"].status == PASS  # the other checks still ran


# --- bucket ------------------------------------------------------------------------------------

def test_missing_bucket_says_how_to_create_it(cloud: FakeGoogleCloud,
                                              spec: dict[str, Any]) -> None:
    cloud.on("GET", rf"storage/v1/b/{BUCKET}\?", error(404, "NOT_FOUND", "Not Found"), 404)
    result = checks.check_bucket(context(spec))
    assert result.status == FAIL and result.detail == f"gs://{BUCKET} does not exist"
    assert result.fix == (f"gcloud storage buckets create gs://{BUCKET} --location={REGION} "
                          f"--project {PROJECT}")


@pytest.mark.parametrize("location, ok", [("US", True), ("NAM4", True), ("US-CENTRAL1", True),
                                          ("EUROPE-WEST4", False), ("EU", False)])
def test_a_bucket_outside_the_region_is_said_not_refused(
        cloud: FakeGoogleCloud, spec: dict[str, Any], location: str, ok: bool) -> None:
    """Vertex AI does not require the pipeline root in the run's region (it is slower and
    billed as egress): the preflight says so with the fix, and does not stop the run."""
    cloud.on("GET", rf"storage/v1/b/{BUCKET}\?", {"name": BUCKET, "location": location})
    result = checks.check_bucket(context(spec))
    assert result.status == (PASS if ok else UNKNOWN)
    if not ok:
        assert f"is in {location}, not in {REGION}" in result.detail
        assert f"--location={REGION}" in result.fix


def test_bucket_the_run_cannot_write_to_says_which_grant(cloud: FakeGoogleCloud,
                                                         spec: dict[str, Any]) -> None:
    cloud.on("GET", rf"storage/v1/b/{BUCKET}/iam", {"bindings": [
        {"role": "roles/storage.objectViewer", "members": [f"serviceAccount:{RUNNER}"]}]})
    result = checks.check_bucket(context(spec))
    # a grant through a group or a custom role would not show: said, with the fix and a way
    # to check the account itself, but not a reason to refuse the run
    assert result.status == UNKNOWN
    assert f"no direct grant lets {RUNNER} write to it" in result.detail
    assert result.fix.startswith(f"gcloud storage buckets add-iam-policy-binding gs://{BUCKET} "
                                 f"--member=serviceAccount:{RUNNER} "
                                 "--role=roles/storage.objectAdmin")
    assert f"--principal-email={RUNNER} --permission=storage.objects.create" in result.fix


def test_the_grant_aiplatform_makes_itself_lets_the_run_write(cloud: FakeGoogleCloud,
                                                              spec: dict[str, Any]) -> None:
    """objectCreator + objectViewer: what aiplatform grants when it creates the bucket."""
    cloud.on("GET", rf"storage/v1/b/{BUCKET}/iam", {"bindings": [
        {"role": "roles/storage.objectViewer", "members": [f"serviceAccount:{RUNNER}"]},
        {"role": "roles/storage.objectCreator", "members": [f"serviceAccount:{RUNNER}"]}]})
    assert checks.check_bucket(context(spec)).status == PASS


def test_bucket_writers_unreadable_is_unknown(cloud: FakeGoogleCloud,
                                              spec: dict[str, Any]) -> None:
    denied = error(403, "PERMISSION_DENIED", "caller does not have storage.buckets.getIamPolicy")
    cloud.on("GET", rf"storage/v1/b/{BUCKET}/iam", denied, 403)
    cloud.on("POST", r":getIamPolicy", denied, 403)
    result = checks.check_bucket(context(spec))
    assert result.status == UNKNOWN and "cannot read who may write to it" in result.detail


def test_a_project_grant_lets_the_run_write(cloud: FakeGoogleCloud,
                                            spec: dict[str, Any]) -> None:
    cloud.on("GET", rf"storage/v1/b/{BUCKET}/iam", {"bindings": []})
    cloud.on("POST", r":getIamPolicy", {"bindings": [
        {"role": "roles/editor", "members": [f"serviceAccount:{RUNNER}"]}]})
    assert checks.check_bucket(context(spec)).status == PASS


# --- images ------------------------------------------------------------------------------------

def test_missing_image_is_named_with_how_to_build_it(cloud: FakeGoogleCloud,
                                                     spec: dict[str, Any]) -> None:
    cloud.on("GET", r"packages/clip-index-gpu/tags/abc",
             error(404, "NOT_FOUND", "Requested entity was not found."), 404)
    result = checks.check_images(context(spec))
    assert result.status == FAIL
    assert result.detail == f"not in Artifact Registry: {REPO}/clip-index-gpu:abc"
    assert "gcloud builds submit --config cloudbuild.yaml" in result.fix


def test_placeholder_images_fail_without_a_request(cloud: FakeGoogleCloud) -> None:
    import tempfile

    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    with tempfile.TemporaryDirectory() as tmp:
        placeholder = yaml.safe_load(Path(compile_pipeline(
            "clip-index", tmp, PipelineSettings())).read_text())
    result = checks.check_images(context(placeholder))
    assert result.status == FAIL and "compiled without --image-repo" in result.detail
    assert cloud.calls == []


def test_digests_are_looked_up_as_versions(cloud: FakeGoogleCloud,
                                           spec: dict[str, Any]) -> None:
    digest = "sha256:" + "ab" * 32
    pinned = json.loads(json.dumps(spec).replace(":abc", "@" + digest))
    assert checks.check_images(context(pinned)).status == PASS
    assert any("/versions/sha256" in url and "ab" * 32 in url for _, url in cloud.calls)


def test_images_elsewhere_are_unknown(cloud: FakeGoogleCloud, spec: dict[str, Any]) -> None:
    elsewhere = json.loads(json.dumps(spec).replace(REPO, "docker.io/someone"))
    result = checks.check_images(context(elsewhere))
    assert result.status == UNKNOWN and "not an Artifact Registry image" in result.detail


# --- quota -------------------------------------------------------------------------------------

def test_zero_gpu_quota_fails_with_the_quota_to_request(cloud: FakeGoogleCloud,
                                                        spec: dict[str, Any]) -> None:
    cloud.healthy(gpus=0)
    result = checks.check_quota(context(spec))
    assert result.status == FAIL
    assert result.detail == ("custom_model_training_nvidia_l4_gpus is 0 in us-central1, the run "
                             "needs 8 (1 per embed task x tasks at once)")
    assert ("gcloud quotas preferences create --service=aiplatform.googleapis.com "
            "--quota-id=CustomModelTrainingNvidiaL4GpusPerProjectPerRegion --preferred-value=8 "
            "--dimensions=region=us-central1") in result.fix
    assert "--embed-parallelism" in result.fix and "--gpu-count 0" in result.fix


def test_a_limit_run_needs_quota_only_for_the_tasks_its_shards_fill(
        cloud: FakeGoogleCloud, spec: dict[str, Any]) -> None:
    from clip_index.launch.preflight_template import shard_count

    cloud.healthy(gpus=1, cpus=14)
    shards = shard_count(spec, {"limit": 1000})
    assert shards == 1
    result = checks.check_quota(context(spec, shards=shards))
    assert result.status == PASS, result.detail
    assert "custom_model_training_nvidia_l4_gpus 1 >= 1" in result.detail
    full = checks.check_quota(context(spec))  # no limit: all 8 embed tasks may run at once
    assert full.status == FAIL and "the run needs 8" in full.detail


def test_the_default_value_applies_to_a_region_without_its_own(cloud: FakeGoogleCloud,
                                                               spec: dict[str, Any]) -> None:
    cloud.on("GET", r"quotaInfos", {"quotaInfos": [
        quota_info(L4_QUOTA, {"europe-west4": 16, "": 2}, "L4"),
        quota_info(CPU_QUOTA, {"": -1}, "CPUS")]})
    result = checks.check_quota(context(spec))
    assert result.status == FAIL and "is 2 in us-central1, the run needs 8" in result.detail


def test_quota_unreadable_is_unknown(cloud: FakeGoogleCloud, spec: dict[str, Any]) -> None:
    cloud.on("GET", r"quotaInfos", error(403, "PERMISSION_DENIED", "Cloud Quotas API has not "
                                         "been used in project 123456789012"), 403)
    results = by_name(run_preflight(context(spec)))
    assert results["quota"].status == UNKNOWN
    assert "Cloud Quotas API has not been used" in results["quota"].detail


def test_a_cpu_template_needs_no_gpu_quota(cloud: FakeGoogleCloud, tmp_path: Path) -> None:
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    cpu = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path), PipelineSettings(
        gpu_count=0, cpu_image=f"{REPO}/clip-index-cpu:abc",
        gpu_image=f"{REPO}/clip-index-gpu:abc"))).read_text())
    cloud.healthy(gpus=0)
    result = checks.check_quota(context(cpu))
    assert result.status == PASS and "gpus" not in result.detail


# --- roles -------------------------------------------------------------------------------------

def test_missing_roles_are_granted_by_the_fix(cloud: FakeGoogleCloud,
                                              spec: dict[str, Any]) -> None:
    cloud.on("POST", r":getIamPolicy", {"bindings": [
        {"role": "roles/artifactregistry.writer", "members": [f"serviceAccount:{RUNNER}"]}]})
    result = checks.check_roles(context(spec))
    # not refused (a group or folder grant would not show), but said with the grant to make
    assert result.status == UNKNOWN
    assert result.detail.startswith(f"no direct grant of roles/aiplatform.user to {RUNNER}")
    assert result.fix == (f"gcloud projects add-iam-policy-binding {PROJECT} "
                          f"--member=serviceAccount:{RUNNER} --role=roles/aiplatform.user")


def test_the_default_account_is_the_compute_default(cloud: FakeGoogleCloud,
                                                    spec: dict[str, Any]) -> None:
    default = f"{NUMBER}-compute@developer.gserviceaccount.com"
    cloud.healthy(account=default)
    results = by_name(run_preflight(context(spec, service_account=None)))
    assert results["roles"].status == PASS and default in results["roles"].detail


def test_roles_unreadable_is_unknown(cloud: FakeGoogleCloud, spec: dict[str, Any]) -> None:
    cloud.on("POST", r":getIamPolicy", error(403, "PERMISSION_DENIED", "denied"), 403)
    result = checks.check_roles(context(spec))
    assert result.status == UNKNOWN and "cannot read the project's IAM policy" in result.detail


# --- doctor ------------------------------------------------------------------------------------

def test_doctor_prints_each_check_and_exits_1_on_a_failure(
        cloud: FakeGoogleCloud, tmp_path: Path, spec: dict[str, Any], no_gcloud: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from clip_index import cli

    template = tmp_path / "t.yaml"
    template.write_text(yaml.safe_dump(spec))
    _user_credentials(no_gcloud / "adc.json", monkeypatch)
    cloud.on("POST", r"oauth2\.googleapis\.com/token",
             {"access_token": "ya29.fresh", "expires_in": 3599, "token_type": "Bearer"})
    cloud.healthy(gpus=0)
    argv = ["doctor", "--project", PROJECT, "--region", REGION, "--pipeline-root",
            f"gs://{BUCKET}/root", "--template", str(template), "--service-account", RUNNER]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL quota" in out and "fix: gcloud quotas preferences create" in out
    assert "--no-preflight" in out
    cloud.healthy(gpus=8)
    assert cli.main([*argv, "--param", "dataset=org/name", "--param", "limit=1000",
                     "--param", "output_dir=gs://b/o"]) == 0
    out = capsys.readouterr().out
    assert "ok   quota" in out and "rows:           1,000 (--param limit)" in out


def test_every_doctor_flag_has_help() -> None:
    import argparse

    from clip_index.cli import build_parser

    parser = build_parser(only="doctor")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = [a for a in sub.choices["doctor"]._actions
               if not isinstance(a, argparse._HelpAction)]
    assert [a.dest for a in actions if not (a.help or "").strip()] == []


def test_nested_loops_multiply_their_widths() -> None:
    """The coming shape: an outer loop over G=4 embed groups, in each a download loop over a
    static list of 3 parts, then the group's GPU task: 12 downloads and 4 GPUs at once."""
    from clip_index.launch.preflight_template import compiled_settings, gpu_demand, loops

    def task(component: str, **extra: Any) -> dict[str, Any]:
        return {"componentRef": {"name": component}, **extra}

    spec = {
        "root": {"dag": {"tasks": {"for-loop-2": task(
            "comp-for-loop-2", parameterIterator={"items": {"inputParameter": "g"}},
            iteratorPolicy={"parallelismLimit": 4})}}},
        "components": {
            "comp-for-loop-2": {"dag": {"tasks": {
                "for-loop-4": task("comp-for-loop-4", parameterIterator={
                    "items": {"raw": json.dumps([{"p": 0}, {"p": 1}, {"p": 2}])}}),
                "embed-images": task("comp-embed-images")}}},
            "comp-for-loop-4": {"dag": {"tasks": {"download-images": task(
                "comp-download-images")}}},
            "comp-embed-images": {"executorLabel": "exec-embed-images"},
            "comp-download-images": {"executorLabel": "exec-download-images"}},
        "deploymentSpec": {"executors": {
            "exec-embed-images": {"container": {"image": f"{REPO}/clip-index-gpu:abc",
                                                "resources": {"cpuLimit": 6.0, "accelerator": {
                                                    "resourceType": "NVIDIA_L4",
                                                    "resourceCount": "2"}}}},
            "exec-download-images": {"container": {"image": f"{REPO}/clip-index-cpu:abc",
                                                   "resources": {"resourceCpuLimit": "7"}}}}}}
    assert gpu_demand(spec) == ("NVIDIA_L4", 2, 8)
    have = compiled_settings(spec)
    assert have["download_parallelism"] == 12 and have["embed_parallelism"] == 4
    assert sorted(loops(spec)) == [("for-loop-2", 4, ["embed-images"]),
                                   ("for-loop-2/for-loop-4", 12, ["download-images"])]
