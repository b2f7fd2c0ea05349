"""The embed task as compiled: a GPU-compiled pipeline makes it require CUDA (device='cuda'),
a CPU one leaves 'auto'; the Kubeflow variant mounts a memory-backed /dev/shm for its
DataLoader workers (GKE pods get 64 MB there otherwise, kubeflow/pipelines#9893)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from clip_index.launch.compiler import compile_all, compile_pipeline
from tests.pipelines.test_cloud_variants import SETTINGS, all_tasks


def _device(spec: dict) -> str:
    params = all_tasks(spec)["embed-images"]["inputs"]["parameters"]
    return params["device"]["runtimeValue"]["constant"]


def test_gpu_pipeline_requires_cuda_and_cpu_pipeline_does_not(tmp_path: Path) -> None:
    gpu = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path / "g"), SETTINGS))
                         .read_text())
    assert _device(gpu) == "cuda"
    cpu_settings = dataclasses.replace(SETTINGS, gpu_count=0)
    cpu = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path / "c"), cpu_settings))
                         .read_text())
    assert _device(cpu) == "auto"


def test_kubeflow_embed_task_gets_a_memory_backed_dev_shm(tmp_path: Path) -> None:
    pytest.importorskip("kfp.kubernetes")
    compile_all(str(tmp_path), SETTINGS)
    spec, platform = yaml.safe_load_all((tmp_path / "clip-index-kubeflow.yaml").read_text())
    (k8s,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert k8s["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm",
                                      "medium": "Memory", "sizeLimit": "8Gi"}]
