"""The cloud checks of the preflight (see preflight.py), each with Google's own client library
on its REST transport: read-only calls that cost nothing. Each returns a `Check`; a call the
caller may not make (403) or an answer that cannot decide the check makes it "unknown", with
the reason, never a failure.

Sources: the APIs and roles a run needs are those of README "Run on Vertex AI" (Vertex AI
Pipelines runs tasks as custom training jobs: cloud.google.com/vertex-ai/docs/pipelines/
configure-project); GPU quota metrics are `aiplatform.googleapis.com/custom_model_training_
<gpu>_gpus` per region (the 429s of GoogleCloudPlatform/vertex-ai-samples#700 and
stable-diffusion-on-gcp#12; the type → metric map of Google's own vertex-ai-samples helpers),
read with the Cloud Quotas API (projects.locations.services.quotaInfos: a QuotaInfo's
`dimensions_infos[].dimensions["region"]` and `details.value`, -1 = unlimited); a quota is
requested with `gcloud quotas preferences create` (cloud.google.com/sdk/gcloud/reference/
quotas/preferences/create).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from clip_index.launch.preflight_template import at_once, gpu_demand, images, task_shapes
from clip_index.launch.preflight_types import FAIL, PASS, UNKNOWN, Check, Context

# APIs a run needs: Vertex AI runs it, Cloud Storage holds the pipeline root, Artifact Registry
# serves the images. (Cloud Build and IAM are for building the images and making the account,
# which a run does not need.)
RUN_APIS = ("aiplatform.googleapis.com", "storage.googleapis.com",
            "artifactregistry.googleapis.com")
# roles of the run's service account on the project, each with the roles that include it.
# Only aiplatform.user: Vertex AI pulls the images with its own service agent, not with a
# custom service account (cloud.google.com/vertex-ai/docs/general/custom-service-account).
SA_ROLES: dict[str, tuple[str, ...]] = {
    "roles/aiplatform.user": ("roles/aiplatform.admin",),
}
BASIC_ROLES = ("roles/owner", "roles/editor")
# what lets an account write objects: aiplatform grants objectCreator + objectViewer itself when
# it creates a pipeline root bucket (gcs_utils.create_gcs_bucket_for_pipeline_artifacts_...)
BUCKET_WRITE_ROLES = ("roles/storage.objectAdmin", "roles/storage.objectUser",
                      "roles/storage.objectCreator", "roles/storage.legacyBucketWriter",
                      "roles/storage.admin", *BASIC_ROLES)
# a 403 that says nothing about the project: an API off on the credentials' quota project, a
# quota project the user may not use, a token without the scope
_NOT_ABOUT_THE_PROJECT = ("SERVICE_DISABLED", "USER_PROJECT_DENIED",
                          "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
# Vertex AI accelerator type → custom training quota metric (Google's vertex-ai-samples map
# for T4/L4/V100/A100/A100_80GB/H100; the others follow the same pattern)
GPU_QUOTA_METRICS = {
    "NVIDIA_TESLA_T4": "nvidia_t4_gpus", "NVIDIA_L4": "nvidia_l4_gpus",
    "NVIDIA_TESLA_V100": "nvidia_v100_gpus", "NVIDIA_TESLA_P100": "nvidia_p100_gpus",
    "NVIDIA_TESLA_P4": "nvidia_p4_gpus", "NVIDIA_TESLA_A100": "nvidia_a100_gpus",
    "NVIDIA_A100_80GB": "nvidia_a100_80gb_gpus", "NVIDIA_H100_80GB": "nvidia_h100_gpus",
    "NVIDIA_H100_MEGA_80GB": "nvidia_h100_mega_gpus", "NVIDIA_H200_141GB": "nvidia_h200_gpus",
}
AIPLATFORM = "aiplatform.googleapis.com"
# Artifact Registry Docker hosts: LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE[:TAG|@DIGEST]
_AR_IMAGE = re.compile(r"^(?P<loc>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/"
                       r"(?P<repo>[^/]+)/(?P<image>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>.+))?$")
# predefined dual-regions (cloud.google.com/storage/docs/locations) → their regions
_DUAL_REGIONS = {"NAM4": ("us-central1", "us-east1"),
                 "EUR4": ("europe-north1", "europe-west4"),
                 "ASIA1": ("asia-northeast1", "asia-northeast2")}
_MULTI_REGIONS = {"US": "us-", "EU": "europe-", "ASIA": "asia-"}


def _options(ctx: Context) -> dict[str, Any]:
    return {"credentials": ctx.credentials, "transport": "rest"}


def project_roles(ctx: Context) -> dict[str, set[str]] | None:
    """role → members of the project's IAM policy (cached on ctx), or None when unreadable."""
    from google.api_core import exceptions
    from google.cloud import resourcemanager_v3

    if ctx.project_policy is None and ctx.project_policy_error is None:
        try:
            policy = resourcemanager_v3.ProjectsClient(**_options(ctx)).get_iam_policy(
                request={"resource": f"projects/{ctx.project}",
                         "options": {"requested_policy_version": 3}})
            ctx.project_policy = {b.role: set(b.members) for b in policy.bindings}
        except exceptions.GoogleAPICallError as e:
            ctx.project_policy_error = _reason(e)
    return ctx.project_policy


def _reason(e: Exception) -> str:
    return f"{getattr(e, 'code', '')} {getattr(e, 'message', e)}".strip()


def _has(policy: dict[str, set[str]], member: str, roles: tuple[str, ...]) -> str | None:
    return next((r for r in roles if member in policy.get(r, set())), None)


def check_project(ctx: Context) -> Check:
    """The project exists, is active and the caller can see it; records its number."""
    from google.api_core import exceptions
    from google.cloud import resourcemanager_v3

    fix = (f"check --project {ctx.project!r}: `gcloud projects list` shows the projects you "
           "can use; `gcloud auth application-default login` signs you in again")
    try:
        project = resourcemanager_v3.ProjectsClient(**_options(ctx)).get_project(
            name=f"projects/{ctx.project}")
    except (exceptions.Forbidden, exceptions.NotFound) as e:  # REST: 403 is Forbidden
        if getattr(e, "reason", None) in _NOT_ABOUT_THE_PROJECT:
            service = (getattr(e, "metadata", None) or {}).get("service", "")
            return Check("project", UNKNOWN, f"cannot look up project {ctx.project!r} "
                         f"({_reason(e)})", f"gcloud services enable {service}" if service
                         else "gcloud auth application-default set-quota-project "
                         f"{ctx.project}")
        return Check("project", FAIL, f"project {ctx.project!r} does not exist or you cannot "
                     f"see it ({_reason(e)})", fix)
    if project.state != resourcemanager_v3.Project.State.ACTIVE:
        return Check("project", FAIL, f"project {ctx.project!r} is {project.state.name}",
                     f"`gcloud projects undelete {ctx.project}` or use another --project")
    ctx.project_number = project.name.split("/")[-1]
    return Check("project", PASS, f"{ctx.project} (number {ctx.project_number}), active")


def check_apis(ctx: Context) -> Check:
    """The APIs a run needs are enabled."""
    from google.cloud import service_usage_v1

    parent = f"projects/{ctx.project_number or ctx.project}"
    reply = service_usage_v1.ServiceUsageClient(**_options(ctx)).batch_get_services(
        request={"parent": parent, "names": [f"{parent}/services/{api}" for api in RUN_APIS]})
    enabled = {s.config.name or s.name.rsplit("/", 1)[-1] for s in reply.services
               if s.state == service_usage_v1.State.ENABLED}
    off = [api for api in RUN_APIS if api not in enabled]
    if off:
        return Check("apis", FAIL, f"not enabled: {', '.join(off)}",
                     f"gcloud services enable {' '.join(off)} --project {ctx.project}")
    return Check("apis", PASS, "enabled: " + ", ".join(RUN_APIS))


def _location_ok(location: str, data_locations: list[str], region: str) -> bool:
    location = location.upper()
    if location == region.upper():
        return True
    if location in _MULTI_REGIONS:
        return region.startswith(_MULTI_REGIONS[location])
    regions = _DUAL_REGIONS.get(location, tuple(r.lower() for r in data_locations))
    return region in regions


def check_bucket(ctx: Context) -> Check:
    """The pipeline root's bucket exists, is in (or spans) the run's region, and the run's
    service account may write objects into it (a bucket or project grant)."""
    from google.api_core import exceptions
    from google.cloud import storage  # type: ignore[attr-defined]

    bucket_name = ctx.pipeline_root.removeprefix("gs://").split("/", 1)[0]
    create = (f"gcloud storage buckets create gs://{bucket_name} --location={ctx.region} "
              f"--project {ctx.project}")
    client = storage.Client(project=ctx.project, credentials=ctx.credentials)
    try:
        bucket = client.get_bucket(bucket_name)
    except exceptions.NotFound:
        return Check("bucket", FAIL, f"gs://{bucket_name} does not exist", create)
    except exceptions.Forbidden as e:
        return Check("bucket", UNKNOWN, f"cannot read gs://{bucket_name}'s settings "
                     f"({_reason(e)}; needs storage.buckets.get)")
    if not _location_ok(bucket.location or "", list(bucket.data_locations or []), ctx.region):
        # allowed, but slower and billed as egress: said, not refused
        return Check("bucket", UNKNOWN, f"gs://{bucket_name} is in {bucket.location}, not in "
                     f"{ctx.region}: every task would read and write across regions (slower, "
                     "and billed as network egress)",
                     f"{create.replace(bucket_name, bucket_name + '-' + ctx.region)} and "
                     f"pass --pipeline-root gs://{bucket_name}-{ctx.region}/pipeline-root")
    member = f"serviceAccount:{ctx.run_account}"
    grant = (f"gcloud storage buckets add-iam-policy-binding gs://{bucket_name} "
             f"--member={member} --role=roles/storage.objectAdmin")
    try:
        policy = bucket.get_iam_policy(requested_policy_version=3)
        on_bucket = {b["role"]: set(b["members"]) for b in policy.bindings}
    except exceptions.Forbidden as e:
        on_bucket, bucket_error = {}, _reason(e)
    else:
        bucket_error = ""
    role = _has(on_bucket, member, BUCKET_WRITE_ROLES) or _has(
        project_roles(ctx) or {}, member, BUCKET_WRITE_ROLES)
    where = f"gs://{bucket_name} ({bucket.location})"
    if role:
        return Check("bucket", PASS, f"{where}; {ctx.run_account} has {role}")
    if bucket_error or ctx.project_policy is None:
        return Check("bucket", UNKNOWN, f"{where}; cannot read who may write to it "
                     f"({bucket_error or ctx.project_policy_error})")
    # no direct grant: one through a group, a folder or a custom role is not visible here, so
    # this cannot refuse the run; the troubleshooter answers for the account itself
    return Check("bucket", UNKNOWN, f"{where}: no direct grant lets {ctx.run_account} write "
                 "to it (one through a group, folder or custom role would not show here)",
                 f"{grant}, or check: gcloud policy-intelligence troubleshoot-policy iam "
                 f"//storage.googleapis.com/projects/_/buckets/{bucket_name} "
                 f"--principal-email={ctx.run_account} --permission=storage.objects.create")


def check_images(ctx: Context) -> Check:
    """Every image the template names exists in Artifact Registry, with its tag or digest."""
    from google.api_core import exceptions
    from google.cloud import artifactregistry_v1

    client = None
    missing, unknown, found = [], [], []
    for image in images(ctx.spec):
        m = _AR_IMAGE.match(image)
        if not m:
            unknown.append(f"{image} (not an Artifact Registry image: not checked)")
            continue
        if m["project"] == "PROJECT":
            missing.append(f"{image} (the placeholder repository: the template was compiled "
                           "without --image-repo)")
            continue
        client = client or artifactregistry_v1.ArtifactRegistryClient(**_options(ctx))
        package = (f"projects/{m['project']}/locations/{m['loc']}/repositories/{m['repo']}/"
                   f"packages/{urllib.parse.quote(m['image'], safe='')}")
        try:
            if m["digest"]:
                client.get_version(name=f"{package}/versions/{m['digest']}")
            else:
                client.get_tag(name=f"{package}/tags/{m['tag'] or 'latest'}")
            found.append(image)
        except exceptions.NotFound:
            missing.append(image)
        except exceptions.Forbidden as e:
            unknown.append(f"{image} (cannot read it: {_reason(e)})")
    if missing:
        return Check("images", FAIL, "not in Artifact Registry: " + "; ".join(missing),
                     "build and push them (README step 2: `gcloud builds submit --config "
                     "cloudbuild.yaml ...`), or compile with the --image-repo/--image-tag "
                     "that `gcloud artifacts docker images list REGION-docker.pkg.dev/"
                     "PROJECT/clip-index --include-tags` lists")
    if unknown:
        return Check("images", UNKNOWN, "; ".join(unknown))
    return Check("images", PASS, ", ".join(found))


def _quota_value(info: Any, region: str) -> int | None:
    """The quota's value in `region` (-1: unlimited), or None when no entry applies."""
    default = None
    for dims in info.dimensions_infos:
        if dims.dimensions.get("region") == region:
            return int(dims.details.value)
        if "region" not in dims.dimensions and (
                not dims.applicable_locations or region in dims.applicable_locations):
            default = int(dims.details.value)
    return default


def check_quota(ctx: Context) -> Check:
    """The region's custom-training GPU quota for the compiled GPU type covers the GPUs the
    run holds at once (GPUs per task × embed tasks at once), and the CPU quota covers the
    widest loop's vCPUs."""
    from google.cloud import cloudquotas_v1

    demand = gpu_demand(ctx.spec, ctx.shards)
    bounded = f", {ctx.shards} shard(s) with this limit" if ctx.shards else ""
    needs: dict[str, tuple[int | None, str]] = {}
    if demand is not None:
        gpu_type, per_task, held = demand
        if gpu_type not in GPU_QUOTA_METRICS:
            return Check("quota", UNKNOWN, f"no quota metric known for {gpu_type}")
        needs[f"{AIPLATFORM}/custom_model_training_{GPU_QUOTA_METRICS[gpu_type]}"] = (
            held, f"{per_task} per embed task x tasks at once{bounded}")
    cpus = [n * t.cpu for t in task_shapes(ctx.spec)
            if t.cpu and (n := at_once(t, ctx.shards)) is not None]
    if cpus:
        needs[f"{AIPLATFORM}/custom_model_training_cpus"] = (
            int(max(cpus)), f"the widest loop's vCPU limits{bounded}; machines round up")
    client = cloudquotas_v1.CloudQuotasClient(**_options(ctx))
    parent = f"projects/{ctx.project}/locations/global/services/{AIPLATFORM}"
    infos = {i.metric: i for i in client.list_quota_infos(parent=parent) if i.metric in needs}
    short, lines, unknown = [], [], []
    for metric, (need, why) in needs.items():
        name = metric.split("/", 1)[1]
        value = _quota_value(infos[metric], ctx.region) if metric in infos else None
        if value is None:
            unknown.append(f"{name}: no value for {ctx.region}")
        elif need is None:
            unknown.append(f"{name}: {value} in {ctx.region}; a loop's width is open")
        elif 0 <= value < need:
            short.append((name, value, need, why, infos[metric].quota_id))
        else:
            lines.append(f"{name} {'unlimited' if value < 0 else value} >= {need}")
    if short:
        detail = "; ".join(f"{n} is {v} in {ctx.region}, the run needs {need} ({why})"
                           for n, v, need, why, _ in short)
        fixes = [f"gcloud quotas preferences create --service={AIPLATFORM} "
                 f"--quota-id={qid} --preferred-value={need} --dimensions=region={ctx.region} "
                 f"--project={ctx.project} --email=YOU" for _, _, need, _, qid in short]
        return Check("quota", FAIL, detail, " ; ".join(fixes) + " (or IAM & Admin → Quotas; "
                     "or compile with a smaller --embed-parallelism, a --gpu-type you have "
                     "quota for, or --gpu-count 0)")
    if unknown:
        return Check("quota", UNKNOWN, "; ".join(unknown + lines))
    return Check("quota", PASS, "; ".join(lines) + f" in {ctx.region}")


def check_roles(ctx: Context) -> Check:
    """The run's service account has the project roles the README grants it."""
    policy = project_roles(ctx)
    if policy is None:
        return Check("roles", UNKNOWN, f"cannot read the project's IAM policy "
                     f"({ctx.project_policy_error}; needs resourcemanager.projects.getIamPolicy)")
    member = f"serviceAccount:{ctx.run_account}"
    missing = [role for role, wider in SA_ROLES.items()
               if not _has(policy, member, (role, *wider, *BASIC_ROLES))]
    if missing:  # not refused: a grant through a group or folder does not show here
        fix = " && ".join(f"gcloud projects add-iam-policy-binding {ctx.project} "
                          f"--member={member} --role={role}" for role in missing)
        return Check("roles", UNKNOWN, f"no direct grant of {', '.join(missing)} to "
                     f"{ctx.run_account} on {ctx.project} (one through a group or folder would "
                     "not show here)", fix)
    return Check("roles", PASS, f"{ctx.run_account}: {', '.join(SA_ROLES)}")
