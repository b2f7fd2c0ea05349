"""`clip-index submit`: compile the pipeline (or take a compiled YAML) and submit it to Vertex AI
Pipelines with google-cloud-aiplatform's `PipelineJob`; print the console URL; `--wait` streams
the run's state and its tasks' states until it ends.

Everything that can be checked is checked before the request: parameter names and types against
the template, step configs (`validate()`), gs:// locations, label syntax, and that the template
is a single-document YAML (the Kubeflow variant is not: Vertex AI refuses it). Then the project
itself (launch/preflight.py, `clip-index doctor`: APIs, bucket, images, GPU quota, roles), and a
one-screen summary of what is about to start (launch/preflight_template.py).

`--template` takes what aiplatform's `PipelineJob(template_path=...)` takes: a local file, a
gs:// object, an Artifact Registry URL (https://REGION-kfp.pkg.dev/PROJECT/REPO/NAME/TAG or
.../sha256:DIGEST, where Cloud Build uploads it) or an https URL of a .yaml/.json file. Remote
templates are read with aiplatform's own loader (`utils.yaml_utils.load_yaml`), so the checks
see what the job will be built from.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERTEX_PIPELINE = "clip-index"
# Vertex AI label rules: lowercase letters, digits, '_' and '-', at most 63 characters; keys
# start with a letter.
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_DONE_STATES = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
# The patterns aiplatform's PipelineJob and yaml_utils.load_yaml accept for an https template
# (google/cloud/aiplatform/constants/pipeline.py: _VALID_AR_URL, _VALID_HTTPS_URL); copied so
# that a wrong URL is refused with our message before aiplatform is imported.
AR_TEMPLATE = re.compile(r"^https://([\w-]+)-kfp\.pkg\.dev/.*", re.IGNORECASE)
HTTPS_TEMPLATE = re.compile(r"^https://([./\w-]+)/.*(json|yaml|yml)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clip_index.launch.settings_flags import add_settings_flags

    parser.add_argument("--project", required=True, help="GCP project id")
    parser.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    parser.add_argument("--pipeline-root", required=True,
                        help="gs:// folder for the run's artifacts")
    parser.add_argument("--template", default=None,
                        help="a compiled clip-index.yaml: a local file, gs://..., or the "
                             "Artifact Registry URL Cloud Build uploaded it to, "
                             "https://REGION-kfp.pkg.dev/PROJECT/REPO/clip-index/TAG (default: "
                             "compile now with the flags below; then --image-repo is required)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a pipeline parameter (repeatable; overrides --config)")
    parser.add_argument("--config", default=None,
                        help="JSON or YAML file of pipeline parameters")
    parser.add_argument("--service-account", default=None,
                        help="service account the run's tasks use (default: the project's "
                             "Compute Engine default service account)")
    parser.add_argument("--network", default=None,
                        help="VPC to peer, projects/NUMBER/global/networks/NAME")
    parser.add_argument("--labels", default="", metavar="K=V[,K=V]",
                        help="labels of the run (billing reports group by them)")
    parser.add_argument("--no-cache", action="store_true",
                        help="rerun every task (default: finished tasks and shards are reused)")
    parser.add_argument("--display-name", default=None,
                        help="the run's name in the Vertex AI console (default: the pipeline's)")
    parser.add_argument("--job-id", default=None, help="run id (default: generated)")
    parser.add_argument("--wait", action="store_true", help="stream the state until the run ends")
    parser.add_argument("--poll-s", type=float, default=30.0, help="--wait polling interval")
    parser.add_argument("--no-preflight", action="store_true",
                        help="skip the checks of `clip-index doctor` (credentials, APIs, bucket, "
                             "images, GPU quota, roles) before the run is created")
    add_settings_flags(parser)


def parse_labels(text: str) -> dict[str, str]:
    """``team=search,env=prod`` → dict, checked against Vertex AI's label rules."""
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"label {item!r}: expected key=value, lowercase letters, digits, "
                             "'_' or '-', at most 63 characters, keys starting with a letter")
        labels[key] = value
    return labels


def is_remote_template(template: str) -> bool:
    """True for a template aiplatform reads itself (gs://, Artifact Registry or https URL)."""
    return template.startswith(("gs://", "https://", "http://"))


def _kubeflow_variant(template: str, documents: int | str) -> ValueError:
    return ValueError(f"template {template!r} has {documents} YAML documents: it is the "
                      "Kubeflow variant (kfp-kubernetes settings), which Vertex AI refuses; "
                      f"submit {VERTEX_PIPELINE}.yaml")


def read_template(template: str, project: str | None = None,
                  credentials: Any = None) -> dict[str, Any]:
    """The compiled pipeline spec of a local file, gs:// object, Artifact Registry URL or https
    .yaml/.json URL (read as aiplatform's PipelineJob reads it). Raises ValueError naming the
    template on a URL aiplatform would refuse, an HTTP error (with what to do), or a
    multi-document YAML."""
    import yaml

    if not is_remote_template(template):
        if not os.path.exists(template):
            raise FileNotFoundError(f"--template {template!r}: no such file")
        docs = [d for d in yaml.safe_load_all(Path(template).read_text()) if d is not None]
        if len(docs) != 1:
            raise _kubeflow_variant(template, len(docs))
        loaded: Any = docs[0]
    else:
        if template.startswith("http") and not (AR_TEMPLATE.match(template)
                                                 or HTTPS_TEMPLATE.match(template)):
            raise ValueError(f"--template {template!r}: expected an Artifact Registry URL "
                             "https://REGION-kfp.pkg.dev/PROJECT/REPO/NAME/TAG (or "
                             ".../sha256:DIGEST), an https URL ending in .yaml/.yml/.json, a "
                             "gs:// object or a local file")
        loaded = _read_remote(template, project, credentials)
    if not isinstance(loaded, dict) or "root" not in loaded or "pipelineInfo" not in loaded:
        raise ValueError(f"template {template!r} is not a compiled KFP pipeline")
    return loaded


def _read_remote(template: str, project: str | None, credentials: Any) -> Any:
    import urllib.error

    import yaml
    from google.cloud.aiplatform.utils import yaml_utils

    try:
        return yaml_utils.load_yaml(template, project, credentials)
    except yaml.composer.ComposerError:  # "expected a single document in the stream"
        raise _kubeflow_variant(template, "several") from None
    except urllib.error.HTTPError as e:
        hint = {401: "run `gcloud auth application-default login` (or give the job's service "
                     "account) so the request carries credentials",
                403: "grant the caller roles/artifactregistry.reader on the repository",
                404: "no such package, tag or digest: list them with `gcloud artifacts tags "
                     "list --repository=REPO --location=REGION --package=clip-index`"}
        raise ValueError(f"--template {template!r}: HTTP {e.code} {e.reason}; "
                         f"{hint.get(e.code, 'check the URL')}") from None


def template_parameters(template_path: str, project: str | None = None,
                        credentials: Any = None,
                        spec: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The root parameters of a compiled template (`spec`, when it was read already): name →
    {parameterType, defaultValue?}. Refuses a multi-document YAML (the kfp-kubernetes
    variant) with a clear message."""
    spec = spec if spec is not None else read_template(template_path, project, credentials)
    params: dict[str, dict[str, Any]] = spec["root"].get("inputDefinitions", {}).get(
        "parameters", {})
    return params


_COERCE = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "STRING": str}


def coerce(name: str, value: Any, kind: str) -> Any:
    """A parameter value (a flag's string, or a config file's value) as the template's type."""
    try:
        if kind == "BOOLEAN":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if kind == "NUMBER_INTEGER" and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return _COERCE.get(kind, lambda v: v)(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name}={value!r}: expected {kind.lower()}") from None


def load_parameters(config: str | None, pairs: list[str]) -> dict[str, Any]:
    """Parameters from a JSON/YAML file, then `NAME=VALUE` pairs on top."""
    params: dict[str, Any] = {}
    if config:
        import yaml

        loaded = yaml.safe_load(Path(config).read_text())  # YAML is a superset of JSON
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {config!r}: expected a mapping of parameter → value")
        params.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        params[name.replace("-", "_")] = value
    return params


def check_parameters(template_path: str, params: dict[str, Any], project: str | None = None,
                     credentials: Any = None, fingerprint: bool = False,
                     spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Typed parameters for the template; raises on unknown names, missing required ones, bad
    types, values the step configs refuse, and an output_dir a Vertex worker cannot publish to.
    With `fingerprint`, a template that takes `dataset_fingerprint` gets it computed from the
    dataset unless given (see launch/fingerprint.py: the load step's cache key)."""
    from clip_index.launch.fingerprint import with_fingerprint
    from clip_index.launch.runner import configs_from_params

    spec = template_parameters(template_path, project, credentials, spec)
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"unknown pipeline parameters {unknown}: expected some of {sorted(spec)}")
    typed = {n: coerce(n, v, spec[n]["parameterType"]) for n, v in params.items()}
    missing = sorted(n for n, s in spec.items()
                     if "defaultValue" not in s and not s.get("isOptional") and n not in typed)
    if missing:
        raise ValueError(f"missing required pipeline parameters {missing}: give them with "
                         "--param NAME=VALUE or --config FILE")
    defaults = {n: s["defaultValue"] for n, s in spec.items() if "defaultValue" in s}
    configs_from_params({n: coerce(n, v, spec[n]["parameterType"])
                         for n, v in {**defaults, **typed}.items()})
    output_dir = str(typed.get("output_dir", ""))
    if output_dir and not output_dir.startswith(("gs://", "/gcs/")):
        raise ValueError(f"output_dir={output_dir!r}: expected a gs:// folder (a local path "
                         "would be written inside a worker's container and lost)")
    if fingerprint and "dataset_fingerprint" in spec:  # after the checks: it may list gs://
        typed = with_fingerprint(typed)
    return typed


def build_job(template_path: str, params: dict[str, Any], project: str, region: str,
              pipeline_root: str, labels: dict[str, str] | None = None,
              enable_caching: bool | None = None, display_name: str | None = None,
              job_id: str | None = None, credentials: Any = None,
              spec: dict[str, Any] | None = None) -> Any:
    """The aiplatform.PipelineJob a submit would create (nothing is sent yet). A remote
    template is read twice: here for the checks (unless its `spec` is given), then by
    PipelineJob, which records its URL (`template_uri`) on the run."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    if not pipeline_root.startswith("gs://"):
        raise ValueError(f"pipeline_root={pipeline_root!r}: expected a gs:// folder")
    if credentials is None and is_remote_template(template_path):
        # what PipelineJob itself would use: the Artifact Registry read needs a token
        credentials = initializer.global_config.credentials
    typed = check_parameters(template_path, params, project, credentials, fingerprint=True,
                             spec=spec)
    return aiplatform.PipelineJob(
        display_name=display_name or VERTEX_PIPELINE, template_path=template_path,
        job_id=job_id, pipeline_root=pipeline_root, parameter_values=typed,
        enable_caching=enable_caching, labels=labels or None, project=project,
        location=region, credentials=credentials)


def console_url(job: Any) -> str:
    """The Google Cloud console page of a submitted run."""
    m = re.match(r"projects/([^/]+)/locations/([^/]+)/pipelineJobs/([^/]+)$", job.resource_name)
    if not m:
        raise RuntimeError(f"unexpected pipeline job name {job.resource_name!r}")
    project, location, run = m.groups()
    return (f"https://console.cloud.google.com/vertex-ai/locations/{location}/pipelines/runs/"
            f"{run}?project={project}")


def wait(job: Any, poll_s: float, echo: Any = print) -> str:
    """Poll until the run ends; `echo` each change of the run's or a task's state, one line
    per task by its id (every iteration of a loop runs a task of the same name); return the
    final state name."""
    seen: dict[int | None, str] = {}
    while True:
        state = job.state.name
        if seen.get(None) != state:
            echo(f"{time.strftime('%H:%M:%S')} run: {state}")
            seen[None] = state
        for task in job.task_details:
            if task.task_name and seen.get(task.task_id) != task.state.name:
                seen[task.task_id] = task.state.name
                echo(f"{time.strftime('%H:%M:%S')}   {task.task_name} #{task.task_id}: "
                     f"{task.state.name}")
        if state in _DONE_STATES:
            return str(state)
        time.sleep(poll_s)


def compile_template(args: argparse.Namespace, directory: str) -> str:
    """Compile the Vertex AI pipeline with the compile flags of `args`; return the YAML path."""
    from clip_index.launch.compiler import compile_pipeline
    from clip_index.launch.settings_flags import settings_from_args

    if not args.image_repo:
        raise ValueError("submit: give --image-repo (where the clip-index-cpu/-gpu images were "
                         "pushed, e.g. us-central1-docker.pkg.dev/PROJECT/clip-index) with "
                         "--image-tag, or a compiled --template")
    settings = settings_from_args(args)
    settings.validate()
    return compile_pipeline(VERTEX_PIPELINE, directory, settings)


def run_submit(args: argparse.Namespace, credentials: Any = None, api_client: Any = None,
               echo: Any = lambda line: None) -> Any:
    """Check, summarise, build and submit the job; return it. In order: the template and the
    parameters (no network but the template's URL), the preflight (`--no-preflight` skips it;
    a failed check raises PreflightFailed), the dataset's fingerprint, the summary (`echo`),
    then the request. `credentials`/`api_client` are for tests."""
    from clip_index.launch.preflight import preflight
    from clip_index.launch.preflight_template import summary

    labels = parse_labels(args.labels)
    if not args.pipeline_root.startswith("gs://"):
        raise ValueError(f"pipeline_root={args.pipeline_root!r}: expected a gs:// folder")
    if credentials is None and args.template and is_remote_template(args.template):
        from google.cloud.aiplatform import initializer

        credentials = initializer.global_config.credentials
    with tempfile.TemporaryDirectory() as tmp:
        template = args.template or compile_template(args, tmp)
        spec = read_template(template, args.project, credentials)
        params = load_parameters(args.config, args.param)
        typed = check_parameters(template, params, args.project, credentials, spec=spec)
        if not args.no_preflight:
            preflight(args, spec, credentials, echo, typed)
        job = build_job(template, params, args.project, args.region, args.pipeline_root,
                        labels, False if args.no_cache else None, args.display_name,
                        args.job_id, credentials, spec=spec)
    echo(summary(spec, dict(job.runtime_config.parameter_values), args.pipeline_root))
    if api_client is not None:
        job.api_client = api_client
    job.submit(service_account=args.service_account, network=args.network)
    return job


def command(args: argparse.Namespace) -> int:
    job = run_submit(args, echo=print)
    print(f"submitted {job.resource_name}")
    print(f"console: {console_url(job)}")
    if not args.wait:
        return 0
    state = wait(job, args.poll_s)
    print(json.dumps({"state": state, "run": job.resource_name}))
    return 0 if state == "PIPELINE_STATE_SUCCEEDED" else 1
