"""The optional final publish step, as compiled: it runs only when hub_repo_id is set, after the
report, on the CPU image, never cached; and its Secret Manager token helper."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from clip_index.launch.compiler import compile_pipeline
from clip_index.pipelines import PipelineSettings
from tests.support.http_server import TestServer


def test_publish_task_is_conditional_on_hub_repo_id(tmp_path: Path) -> None:
    settings = PipelineSettings(cpu_image="r/clip-index-cpu:abc", gpu_image="r/clip-index-gpu:abc")
    spec = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path), settings))
                          .read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["hub_repo_id"]["defaultValue"] == ""
    assert params["hub_private"]["defaultValue"] is False
    tasks = spec["root"]["dag"]["tasks"]
    condition = next(t for t in tasks.values() if t["taskInfo"]["name"] == "publish-to-hub")
    assert "!= ''" in condition["triggerPolicy"]["condition"]
    assert "report" in condition["dependentTasks"]
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    publish = inner["publish-to-hub"]
    assert publish["taskInfo"]["name"] == "Publish to the Hugging Face Hub"
    assert publish["cachingOptions"] == {}
    executor = spec["deploymentSpec"]["executors"]["exec-publish-to-hub"]
    assert executor["container"]["image"] == "r/clip-index-cpu:abc"
    assert "resources" not in executor["container"]


def test_secret_token_reads_a_secret_manager_version(http_server: TestServer) -> None:
    from google.auth.credentials import AnonymousCredentials

    from clip_index.hub import secret_token

    async def access(request: web.Request) -> web.Response:
        data = base64.b64encode(b"hf_secret_token\n").decode()
        return web.json_response({"name": "x", "payload": {"data": data}})

    http_server.add("/v1/projects/p/secrets/hf/versions/latest:access", access)
    endpoint = http_server.url("")
    assert secret_token("projects/p/secrets/hf/versions/latest", endpoint,
                        AnonymousCredentials()) == "hf_secret_token"
    with pytest.raises(PermissionError, match="could not read secret.*HTTP 404"):
        secret_token("projects/p/secrets/other/versions/1", endpoint, AnonymousCredentials())
    with pytest.raises(ValueError, match="expected projects/PROJECT/secrets"):
        secret_token("hf-token")
