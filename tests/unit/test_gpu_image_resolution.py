"""The GPU image's installs, replayed offline with pip's own resolver (tests/support/pip_replay):
the first RUN installs torch and torchvision from PyTorch's cu126 index; the second installs the
package's requirements from PyPI with the image's constraints file. That second install must
keep the cu126 torch and bring in no CUDA 13 package. With constraints.txt itself (the
development venv's freeze, PyPI's CUDA 13 torch) pip replaces torch: the control."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import pip_replay as replay
from tests.support.checkout import needs_checkout

pytestmark = needs_checkout("containers/gpu.Dockerfile", "containers/gpu-constraints.txt",
                            "scripts/gpu_constraints.py")
ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "containers" / "gpu.Dockerfile"


def _pip_installs() -> list[list[str]]:
    """The Dockerfile's runtime-stage `pip install` commands as words, ARGs substituted."""
    text = re.sub(r"\\\n", " ", GPU.read_text()).split(" AS test", 1)[0]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    runs = [line[4:] for line in text.splitlines() if line.startswith("RUN ")]
    out = []
    for run in runs:
        for segment in run.split("&&"):
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], segment))
            if words[:2] == ["pip", "install"] and "--no-deps" not in words:
                out.append(words[2:])
    return out


def _split(words: list[str]) -> tuple[list[str], str | None]:
    reqs, constraints, skip = [], None, None
    for w in words:
        if skip:
            constraints = w if skip in ("-c", "--constraint") else constraints
            skip = None
        elif w in ("-c", "--constraint", "--index-url", "-i"):
            skip = w
        elif not w.startswith("-"):
            reqs.append(w)
    return reqs, constraints


def _is_cuda13(name: str, version: str) -> bool:
    name = name.lower()
    major = int(version.split(".")[0])
    if name in ("cuda-toolkit", "cuda-bindings"):
        return major >= 13
    return name.startswith("nvidia-") and not name.endswith("-cu12")


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, replay.Indexes]:
    """A venv after the image's first install: the cu126 torch and torchvision, with the
    packages they require, from the stand-in PyTorch index."""
    root = tmp_path_factory.mktemp("gpu-image")
    indexes = replay.make_indexes(root, (ROOT / "constraints.txt").read_text())
    first = _pip_installs()[0]
    reqs, _ = _split(first)
    assert reqs == ["torch==2.14.1+cu126", "torchvision==0.29.1+cu126"], first
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True)
    python = root / "venv" / "bin" / "python"
    proc = replay.pip(python, "install", "--quiet", "--no-index", "--find-links",
                      str(indexes.pytorch), *reqs)
    assert proc.returncode == 0, proc.stderr
    return python, indexes


def _second_install(image_env, constraints: Path) -> dict[str, str]:
    python, indexes = image_env
    words = _pip_installs()[1]
    reqs, named = _split(words)
    assert named == "gpu-constraints.txt" and reqs[0] == ".[all]", words
    requirements = replay.project_requirements(ROOT / "pyproject.toml", "all") + reqs[1:]
    report = replay.install_report(python, indexes.pypi, requirements, constraints)
    return {re.sub(r"[-_.]+", "-", item["metadata"]["name"].lower()): item["metadata"]["version"]
            for item in report["install"]}


def test_the_image_keeps_its_cu126_torch_and_takes_no_cuda13_package(image_env) -> None:
    installs = _second_install(image_env, ROOT / "containers" / "gpu-constraints.txt")
    assert "torch" not in installs and "torchvision" not in installs, installs
    cuda13 = {n: v for n, v in installs.items() if _is_cuda13(n, v)}
    assert not cuda13, f"the GPU image would install CUDA 13 packages: {cuda13}"
    assert "open-clip-torch" in installs and "kfp" in installs  # the install did resolve


def test_with_constraints_txt_pip_would_replace_torch(image_env) -> None:
    """The control: the replay does see the bug the image had."""
    installs = _second_install(image_env, ROOT / "constraints.txt")
    assert installs.get("torch") == "2.14.1" and installs.get("cuda-toolkit", "").startswith("13")


def test_gpu_constraints_are_generated_from_constraints_txt() -> None:
    proc = subprocess.run([sys.executable, "scripts/gpu_constraints.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    pinned = replay.pins((ROOT / "containers" / "gpu-constraints.txt").read_text())
    assert pinned["torch"] == "2.14.1+cu126" and pinned["torchvision"] == "0.29.1+cu126"
    assert not [n for n, v in pinned.items() if _is_cuda13(n, v) or n.startswith("cuda-")]


def test_the_image_checks_its_requirements_and_sees_the_video_decoder() -> None:
    runs = " ".join(line for line in re.sub(r"\\\n", " ", GPU.read_text()).splitlines()
                    if line.startswith("RUN "))
    assert runs.count("pip check") >= 2
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in GPU.read_text()
