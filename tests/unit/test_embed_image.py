"""The GPU image, checked from containers/gpu.Dockerfile alone (no Docker engine here): its
Python is the one the pinned wheels exist for, torch comes from the CUDA build whose kernels and
driver floor clip_index/gpus.py states, and the default weights are baked in where the loader
looks."""

from __future__ import annotations

import re
from pathlib import Path

from clip_index.config import EmbedConfig
from clip_index.gpus import CUDA_BUILD, GPUS, has_kernels
from tests.support.checkout import needs_checkout
from tests.unit.test_containers import args_of, instructions, pins

pytestmark = needs_checkout("containers/gpu.Dockerfile")

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "containers" / "gpu.Dockerfile"


def test_base_python_is_the_one_the_pins_have_wheels_for() -> None:
    """Python 3.11 (numpy==1.26.4 has no wheel for 3.13), the CPU image's base."""
    bases = {a.split()[0] for i, a in instructions(GPU) if i == "FROM" and ":" in a.split()[0]}
    (base,) = bases
    m = re.match(r"python:(3)\.(\d+)\.(\d+)-slim-(\w+)$", base)
    assert m and m.group(2) == "11", base
    cpu = ROOT / "containers" / "cpu.Dockerfile"
    cpu_bases = {a.split()[0] for i, a in instructions(cpu) if i == "FROM" and ":" in a.split()[0]}
    assert base in cpu_bases
    assert pins(ROOT / "constraints.txt")["numpy"] == "1.26.4"


def test_torch_comes_from_the_cuda_build_the_gpu_table_assumes() -> None:
    args = args_of(GPU)
    constraints = pins(ROOT / "constraints.txt")
    assert args["TORCH_VERSION"] == constraints["torch"]
    assert args["TORCHVISION_VERSION"] == constraints["torchvision"]
    assert args["CUDA_TAG"] == "cu" + CUDA_BUILD.replace(".", "") == "cu126"
    runs = " ".join(a for i, a in instructions(GPU) if i == "RUN")
    assert 'https://download.pytorch.org/whl/${CUDA_TAG}' in runs
    assert "torch.version.cuda.startswith('12.6')" in runs  # the build fails on another CUDA
    for name, gpu in GPUS.items():
        assert has_kernels(gpu.capability), name


def test_default_weights_are_baked_into_the_cache_the_loader_reads() -> None:
    args = args_of(GPU)
    defaults = EmbedConfig()
    assert (args["BAKED_MODEL"], args["BAKED_PRETRAINED"]) == (defaults.model,
                                                                defaults.pretrained)
    text = GPU.read_text()
    assert "HF_HOME=/opt/hf" in text and "stage_weights(" in text and "staged_weights(" in text
    test_run = [a for i, a in instructions(GPU) if i == "RUN" and "pytest" in a]
    # the tests never see the baked weights
    assert test_run and "HF_HOME=/root/.cache/hf-tests" in test_run[0]
