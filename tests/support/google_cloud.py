"""Google Cloud's REST services, stood in for below the real client libraries: `FakeGoogleCloud`
replaces the `requests` transport adapter's `send`, so that google-auth, google-api-core's REST
transports and google-cloud-storage run as they do against the real services, and answers
each request from routes of (method, URL pattern) → (status, JSON in the services' shapes).
An unrouted request fails the test (nothing reaches the network); the GCE metadata server
is absent, as on a user's machine."""

from __future__ import annotations

import json
import re
from typing import Any

import requests

PROJECT, NUMBER, REGION = "my-proj", "123456789012", "us-central1"
BUCKET = "my-bucket"
RUNNER = "runner@my-proj.iam.gserviceaccount.com"
REPO = f"{REGION}-docker.pkg.dev/{PROJECT}/clip-index"
L4_QUOTA = "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus"
CPU_QUOTA = "aiplatform.googleapis.com/custom_model_training_cpus"
RUN_APIS = ("aiplatform.googleapis.com", "storage.googleapis.com",
            "artifactregistry.googleapis.com", "compute.googleapis.com",
            "cloudbuild.googleapis.com", "iam.googleapis.com")


def error(code: int, status: str, message: str) -> dict[str, Any]:
    """A Google API error body (google.rpc.Status over JSON)."""
    return {"error": {"code": code, "status": status, "message": message}}


def quota_info(metric: str, values: dict[str, int], quota_id: str) -> dict[str, Any]:
    """A Cloud Quotas QuotaInfo: `values` region → limit ("" = the default for all regions)."""
    return {"name": f"projects/{NUMBER}/locations/global/services/aiplatform.googleapis.com/"
                    f"quotaInfos/{quota_id}",
            "quotaId": quota_id, "metric": metric, "service": "aiplatform.googleapis.com",
            "containerType": "PROJECT", "dimensions": ["region"],
            "dimensionsInfos": [
                {"dimensions": {"region": r} if r else {}, "details": {"value": str(v)},
                 "applicableLocations": [r] if r else []} for r, v in values.items()]}


class FakeGoogleCloud:
    """Routes requests to canned answers; records (method, url) of each request."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], int, Any]] = []
        self.calls: list[tuple[str, str]] = []

    def on(self, method: str, pattern: str, body: Any, status: int = 200) -> FakeGoogleCloud:
        """Answer `method` requests whose URL matches `pattern` (the latest route wins)."""
        self.routes.insert(0, (method, re.compile(pattern), status, body))
        return self

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        url = str(request.url)
        if re.match(r"https?://(169\.254\.169\.254|metadata\.google\.internal)\b", url):
            # off Google Cloud: google.auth's metadata-server probe finds nothing
            raise requests.exceptions.ConnectionError(f"no metadata server here: {url}")
        self.calls.append((str(request.method), url))
        for method, pattern, status, body in self.routes:
            if method == request.method and pattern.search(url):
                response = requests.Response()
                response.status_code = status
                response._content = json.dumps(body).encode()
                response.headers["Content-Type"] = "application/json"
                response.url, response.request, response.encoding = url, request, "utf-8"
                response.reason = "OK" if status == 200 else "Error"
                return response
        raise AssertionError(f"unexpected request {request.method} {url}")

    def healthy(self, account: str = RUNNER, gpus: int = 8, cpus: int = 256) -> FakeGoogleCloud:
        """A project where every preflight check passes for `account`."""
        project_roles = [{"role": r, "members": [f"serviceAccount:{account}"]} for r in (
            "roles/aiplatform.user", "roles/artifactregistry.reader", "roles/logging.logWriter")]
        self.on("GET", rf"cloudresourcemanager\.googleapis\.com/v3/projects/{PROJECT}\b",
                {"name": f"projects/{NUMBER}", "projectId": PROJECT, "state": "ACTIVE"})
        self.on("POST", rf"/v3/projects/{PROJECT}:getIamPolicy",
                {"version": 3, "etag": "BwX=", "bindings": project_roles})
        self.on("GET", rf"serviceusage\.googleapis\.com/v1/projects/{NUMBER}/services:batchGet",
                {"services": [{"name": f"projects/{NUMBER}/services/{api}",
                               "config": {"name": api}, "state": "ENABLED"}
                              for api in RUN_APIS]})
        self.on("GET", rf"storage\.googleapis\.com/storage/v1/b/{BUCKET}\?",
                {"kind": "storage#bucket", "name": BUCKET, "location": "US-CENTRAL1",
                 "locationType": "region", "storageClass": "STANDARD"})
        self.on("GET", rf"storage/v1/b/{BUCKET}/iam",
                {"kind": "storage#policy", "etag": "CAE=", "version": 3, "bindings": [
                    {"role": "roles/storage.objectAdmin",
                     "members": [f"serviceAccount:{account}"]}]})
        self.on("GET", r"artifactregistry\.googleapis\.com/v1/projects/.+/(tags|versions)/",
                {"name": "projects/p/locations/l/repositories/r/packages/i/tags/t",
                 "version": "projects/p/locations/l/repositories/r/packages/i/versions/"
                            "sha256:00"})
        self.on("GET", r"cloudquotas\.googleapis\.com/v1/projects/.+/quotaInfos",
                {"quotaInfos": [
                    quota_info(L4_QUOTA, {REGION: gpus, "": 0},
                               "CustomModelTrainingNvidiaL4GpusPerProjectPerRegion"),
                    quota_info(CPU_QUOTA, {"": cpus},
                               "CustomModelTrainingCPUsPerProjectPerRegion")]})
        return self
