"""Embed step device decisions, made on the CPU: GPU types and counts Vertex accepts, the CUDA
build's kernels, CUDA fail-fast, precision by compute capability, workers from the cgroup quota."""

from __future__ import annotations

import pytest
import torch

from clip_index.embed import device as dev
from clip_index.gpus import BUILD_ARCHES, GPUS, check_gpu, has_kernels


def test_vertex_gpu_pairs_are_exactly_the_accepted_ones() -> None:
    check_gpu("NVIDIA_L4", 1)
    check_gpu("NVIDIA_TESLA_A100", 16)
    check_gpu("NVIDIA_H200_141GB", 8)
    check_gpu("ANYTHING", 0)  # no GPU
    for gpu_type in ("NVIDIA_H100_MEGA_80GB", "NVIDIA_H200_141GB"):  # 8-GPU a3 machines only
        for count in (1, 2, 4):
            with pytest.raises(ValueError, match=rf"gpu_count={count} for {gpu_type}.*only as 8"):
                check_gpu(gpu_type, count)
    with pytest.raises(ValueError, match="gpu_count=8 for NVIDIA_TESLA_T4"):
        check_gpu("NVIDIA_TESLA_T4", 8)
    with pytest.raises(ValueError, match="gpu_count=3"):
        check_gpu("NVIDIA_L4", 3)
    with pytest.raises(ValueError, match="gpu_type='NVIDIA_B200'.*CUDA 12.6"):
        check_gpu("NVIDIA_B200", 8)  # Blackwell: no kernels in the image's CUDA 12.6 build


def test_the_image_build_has_kernels_for_every_accepted_gpu() -> None:
    for name, gpu in GPUS.items():
        assert has_kernels(gpu.capability), name
    # what a CUDA 13 build would refuse (pytorch#157517): P4, P100, V100
    cuda13 = ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))
    refused = {n for n, g in GPUS.items() if not has_kernels(g.capability, cuda13)}
    assert refused == {"NVIDIA_TESLA_P4", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_V100"}
    assert not has_kernels((10, 0), BUILD_ARCHES)


def test_pipeline_settings_validate_with_the_gpu_table() -> None:
    from clip_index.pipelines import PipelineSettings

    PipelineSettings(gpu_type="NVIDIA_H200_141GB", gpu_count=8).validate()
    with pytest.raises(ValueError, match="only as 8"):
        PipelineSettings(gpu_type="NVIDIA_H100_MEGA_80GB", gpu_count=1).validate()


@pytest.mark.parametrize(("capability", "want"), [
    ((9, 0), "bf16"), ((8, 9), "bf16"), ((8, 0), "bf16"),  # H100/H200, L4, A100
    ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 0), "fp16"),  # T4, V100, P100
    ((6, 1), "fp32"),  # P4: fp16 at 1/64 rate
])
def test_auto_precision_is_bf16_only_where_native(capability, want) -> None:
    assert dev.choose_precision("auto", "cuda", capability) == want
    assert dev.choose_precision("fp16", "cuda", capability) == "fp16"  # an explicit choice stays
    assert dev.choose_precision("auto", "cpu") == "fp32"


def test_cuda_required_fails_at_once_saying_why(monkeypatch) -> None:
    """Where CUDA is not usable (here: no GPU, or hidden by tests/conftest.py), device='cuda'
    (what a GPU-compiled pipeline passes) refuses with the reason; 'auto' falls back to the CPU;
    the model is never built on the wrong device."""
    from clip_index.config import EmbedConfig
    from clip_index.embed.step import run_embed

    monkeypatch.setattr(dev, "cuda_problem", lambda: "torch 2.x (CUDA 12.6) sees no GPU")
    with pytest.raises(dev.CudaUnavailable, match="device='cuda' was asked for.*not usable"):
        dev.resolve_device("cuda")
    assert dev.resolve_device("auto") == "cpu"
    monkeypatch.setattr(dev, "cuda_problem", lambda: "GPU 0 (Tesla P4) is sm_61, and ...")
    with pytest.raises(dev.CudaUnavailable, match="sm_61"):
        run_embed(["/nonexistent"], [0], "/nonexistent/out",
                  EmbedConfig(model="tiny-clip", pretrained="none", device="cuda"))


def test_cuda_problem_names_an_unsupported_gpu(monkeypatch) -> None:
    """A GPU the build has no kernels for (e.g. a V100 under a CUDA 13 build) is named."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100-SXM2-16GB")
    assert "Tesla V100-SXM2-16GB) is sm_70" in (dev.cuda_problem() or "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "driver is >= 525.60.13" in (dev.cuda_problem() or "")


def _cgroup(tmp_path, **files: str) -> str:
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_cpu_limit_from_cgroup_v2_and_v1(tmp_path) -> None:
    assert dev.cpu_limit(_cgroup(tmp_path / "a", **{"cpu.max": "800000 100000\n"})) == 8.0
    assert dev.cpu_limit(_cgroup(tmp_path / "b", **{"cpu.max": "max 100000\n"})) is None
    v1 = _cgroup(tmp_path / "c", **{"cpu__cpu.cfs_quota_us": "250000\n",
                                    "cpu__cpu.cfs_period_us": "100000\n"})
    assert dev.cpu_limit(v1) == 2.5
    unlimited = _cgroup(tmp_path / "d", **{"cpu__cpu.cfs_quota_us": "-1\n",
                                           "cpu__cpu.cfs_period_us": "100000\n"})
    assert dev.cpu_limit(unlimited) is None
    assert dev.cpu_limit(str(tmp_path / "none")) is None


def test_workers_follow_the_quota_not_the_node(tmp_path, monkeypatch) -> None:
    """A 96-core node with an 8-CPU limit: 8 usable CPUs; one GPU process gets 4 workers
    (capped: they only read bytes), 8 GPU processes on 8 CPUs get 1 each; CPU runs get 0."""
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: set(range(96)))
    root = _cgroup(tmp_path, **{"cpu.max": "800000 100000\n"})
    assert dev.usable_cpus(root) == 8
    assert dev.usable_cpus(str(tmp_path / "none")) == 96
    assert dev.default_num_workers("cuda", 1, cpus=8) == 4
    assert dev.default_num_workers("cuda", 8, cpus=8) == 1
    assert dev.default_num_workers("cuda", 2, cpus=4) == 1
    assert dev.default_num_workers("cpu", 1, cpus=8) == 0


def test_staged_weights_are_found_in_the_hub_cache_without_the_hub(tmp_path) -> None:
    """The GPU image bakes the default weights into the Hugging Face cache; a task then loads
    them by path (with the tag's preprocess settings), never asking the hub."""
    from clip_index.embed.models import staged_weights

    assert staged_weights("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path)) is None
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    found = staged_weights("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path))
    assert found is not None
    path, args = found
    assert path == str(snapshot / "open_clip_model.safetensors")
    assert args["image_mean"] == (0.48145466, 0.4578275, 0.40821073)
    assert args["image_interpolation"] == "bicubic"
    assert staged_weights("tiny-clip", "none", str(tmp_path)) is None


def test_tests_run_on_the_cpu_and_their_subprocesses_too() -> None:
    """tests/conftest.py hides CUDA from every test not selected by `-m gpu` (so device='auto'
    is the CPU on a GPU machine too), and the processes the tests start inherit it."""
    import os
    import subprocess
    import sys

    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert dev.resolve_device("auto") == "cpu"
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


@pytest.mark.parametrize(("markexpr", "gpu_only"), [
    ("gpu", True), ("", False), ("not integration", False), ("not integration and not gpu", False),
    ("gpu and not integration", True), ("gpu or integration", True)])
def test_only_a_gpu_session_sees_the_gpu(markexpr: str, gpu_only: bool) -> None:
    from tests.support.gpu import gpu_only_session

    assert gpu_only_session(markexpr) is gpu_only


def test_a_gpu_session_without_a_gpu_fails_instead_of_skipping(tmp_path) -> None:
    """What `make gpu-check` runs, where torch sees no GPU (here: hidden): a non-zero exit
    naming the reason, not a run of skipped tests that passes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                           "no:cacheprovider", "tests/unit/test_embed_gpu.py"], cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "no GPU" in proc.stdout + proc.stderr
