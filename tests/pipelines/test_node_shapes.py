"""The compiled CPU/memory limits fit the node shapes the README names (issue 16).

On Kubeflow a limit without a request becomes the pod's request, so a task whose limit passes
a node's *allocatable* resources never schedules. Allocatable = capacity − GKE's reservations
(cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes: CPU 6% of the first core,
1% of the next, 0.5% of the next 2, 0.25% above 4; memory 25% of the first 4 GiB, 20% of the
next 4, 10% of the next 8, 6% of the next 112, 2% above 128, plus 100 MiB for eviction), and
the DaemonSet pods (kube-proxy, logging, metrics, the NVIDIA device plugin) take a little more:
a margin of 0.5 vCPU and 1.5 GiB here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clip_index.launch.compiler import compile_pipeline
from clip_index.pipelines import PipelineSettings

# machine type → (vCPU, memory GiB), Compute Engine's published shapes
SHAPES = {"g2-standard-8": (8, 32), "n1-standard-8": (8, 30), "e2-standard-8": (8, 32),
          "n2-standard-8": (8, 32), "n2-standard-16": (16, 64), "e2-standard-4": (4, 16)}
# the task → the node shapes its default limits must fit (README "Node shapes")
FITS = {"exec-embed-images": ["g2-standard-8", "n1-standard-8"],
        "exec-download-images": ["e2-standard-8", "n2-standard-8"],
        "exec-write-embeddings": ["e2-standard-4"],
        "exec-build-index": ["n2-standard-16"]}
DAEMON_CPU, DAEMON_GIB = 0.5, 1.5


def allocatable(vcpu: int, gib: float) -> tuple[float, float]:
    cpu_tiers = [(1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025)]
    mem_tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)]

    def reserved(total: float, tiers: list[tuple[float, float]]) -> float:
        out, left = 0.0, total
        for size, share in tiers:
            out += min(left, size) * share
            left -= min(left, size)
        return out

    return vcpu - reserved(vcpu, cpu_tiers), gib - reserved(gib, mem_tiers) - 100 / 1024


def quantity_gib(text: str) -> float:
    number, unit = re.match(r"^([\d.]+)([A-Za-z]*)$", text).groups()  # type: ignore[union-attr]
    scale = {"": 1 / 2**30, "K": 1e3 / 2**30, "M": 1e6 / 2**30, "G": 1e9 / 2**30,
             "T": 1e12 / 2**30, "Ki": 1 / 2**20, "Mi": 1 / 2**10, "Gi": 1.0, "Ti": 2**10}
    return float(number) * scale[unit]


def test_allocatable_follows_the_tiers() -> None:
    # 4 vCPU: 0.06 + 0.01 + 2 × 0.005 = 0.08 reserved; 16 GiB: 1 + 0.8 + 0.8 = 2.6 GiB + eviction
    cpu, gib = allocatable(4, 16)
    assert cpu == pytest.approx(3.92, abs=0.005)
    assert gib == pytest.approx(16 - 2.6 - 0.1, abs=0.05)


@pytest.mark.parametrize("variant", ["clip-index", "clip-index-kubeflow"])
def test_default_limits_fit_the_named_node_shapes(tmp_path: Path, variant: str) -> None:
    if variant.endswith("kubeflow"):
        pytest.importorskip("kfp.kubernetes")
    path = compile_pipeline(variant, str(tmp_path), PipelineSettings())
    spec = next(yaml.safe_load_all(Path(path).read_text()))
    executors = spec["deploymentSpec"]["executors"]
    for executor, shapes in FITS.items():
        resources = executors[executor]["container"]["resources"]
        cpu = float(resources["resourceCpuLimit"])
        gib = quantity_gib(resources["resourceMemoryLimit"])
        for shape in shapes:
            alloc_cpu, alloc_gib = allocatable(*SHAPES[shape])
            assert cpu <= alloc_cpu - DAEMON_CPU, f"{executor}: {cpu} vCPU on {shape}"
            assert gib <= alloc_gib - DAEMON_GIB, f"{executor}: {gib:.1f} GiB on {shape}"


def test_the_old_defaults_would_not_have_scheduled() -> None:
    # 8 vCPU / 32G for embed on a g2-standard-8: more than the node can ever offer
    alloc_cpu, alloc_gib = allocatable(*SHAPES["g2-standard-8"])
    assert alloc_cpu < 8 and quantity_gib("32G") > alloc_gib
