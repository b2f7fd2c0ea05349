"""GPU table: the Vertex AI accelerator types the embed step may run on, the GPU counts Vertex
accepts for each, their compute capability, and the CUDA build of the GPU image that runs on all
of them.

Sources (checked 2026-11; re-check when adding a type):
- Accelerator type names: Vertex AI REST `MachineSpec.acceleratorType`
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/MachineSpec).
- Counts per type: the machine types Vertex custom training pairs with each accelerator
  (https://cloud.google.com/vertex-ai/docs/training/configure-compute#gpu-compatibility-table):
  N1 + T4/P4/P100 with 1, 2 or 4 GPUs, N1 + V100 with 1, 2, 4 or 8; G2 + L4 with 1, 2, 4 or 8;
  A2 standard + A100 40GB with 1, 2, 4, 8 or 16 (a2-megagpu-16g); A2 ultra + A100 80GB with
  1, 2, 4 or 8; A3 high + H100 with 1, 2, 4 or 8; **A3 mega + H100 MEGA and A3 ultra + H200
  only as 8-GPU machines** (a3-megagpu-8g, a3-ultragpu-8g).
- Kernels: PyTorch 2.14 ships CUDA 12.6 (legacy: Maxwell 5.0, Pascal 6.0, Volta 7.0, Turing
  7.5, Ampere 8.0/8.6, Hopper 9.0), 13.0 and 13.2 (Turing 7.5 and newer only)
  (pytorch/pytorch#190355; CUDA 12.8+/13 dropping sm_50-sm_70: pytorch/pytorch#157517,
  #172663). A CUDA 13 build has no kernels for P4, P100 or V100 and needs an R580+ driver; the
  CUDA 12.6 build runs every type below on any driver >= 525.60.13 (CUDA 12 minor-version
  compatibility), so that is the image's build (containers/gpu.Dockerfile). Blackwell (B200,
  GB200, RTX PRO 6000) needs CUDA 12.8+ and is therefore not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

# The GPU image's CUDA build (torch==2.14.1+cu126) and the oldest driver that runs it.
CUDA_BUILD = "12.6"
MIN_DRIVER = "525.60.13"


@dataclass(frozen=True)
class Gpu:
    """One Vertex AI accelerator type: counts Vertex accepts, the machine family it comes on,
    and the compute capability (major, minor) that decides kernels and precision."""

    counts: tuple[int, ...]
    machines: str
    capability: tuple[int, int]
    memory_gb: int


GPUS: dict[str, Gpu] = {
    "NVIDIA_TESLA_T4": Gpu((1, 2, 4), "n1-*", (7, 5), 16),
    "NVIDIA_L4": Gpu((1, 2, 4, 8), "g2-standard-*", (8, 9), 24),
    "NVIDIA_TESLA_V100": Gpu((1, 2, 4, 8), "n1-*", (7, 0), 16),
    "NVIDIA_TESLA_P100": Gpu((1, 2, 4), "n1-*", (6, 0), 16),
    "NVIDIA_TESLA_P4": Gpu((1, 2, 4), "n1-*", (6, 1), 8),
    "NVIDIA_TESLA_A100": Gpu((1, 2, 4, 8, 16), "a2-highgpu-*, a2-megagpu-16g", (8, 0), 40),
    "NVIDIA_A100_80GB": Gpu((1, 2, 4, 8), "a2-ultragpu-*", (8, 0), 80),
    "NVIDIA_H100_80GB": Gpu((1, 2, 4, 8), "a3-highgpu-*", (9, 0), 80),
    "NVIDIA_H100_MEGA_80GB": Gpu((8,), "a3-megagpu-8g", (9, 0), 80),
    "NVIDIA_H200_141GB": Gpu((8,), "a3-ultragpu-8g", (9, 0), 141),
}
GPU_TYPES = tuple(GPUS)
# Compute capabilities the image's torch build has kernels for (sm_60 kernels also run on
# sm_61, sm_86 ones on sm_89: same major version, newer minor).
BUILD_ARCHES = ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0))


def check_gpu(gpu_type: str, gpu_count: int) -> None:
    """Raise unless Vertex AI accepts `gpu_count` GPUs of `gpu_type` and the GPU image runs on it.
    gpu_count 0 means no GPU (any type)."""
    if gpu_count == 0:
        return
    if gpu_type not in GPUS:
        raise ValueError(f"gpu_type={gpu_type!r}: expected one of {GPU_TYPES} (the Vertex AI "
                         f"accelerator types the GPU image's CUDA {CUDA_BUILD} build runs on)")
    gpu = GPUS[gpu_type]
    if gpu_count not in gpu.counts:
        raise ValueError(f"gpu_count={gpu_count} for {gpu_type}: Vertex AI offers {gpu_type} "
                         f"only as {', '.join(map(str, gpu.counts))} GPUs per machine "
                         f"({gpu.machines})")


def native_bf16(capability: tuple[int, int]) -> bool:
    """bf16 tensor cores: Ampere (sm_80) and newer."""
    return capability >= (8, 0)


def has_kernels(capability: tuple[int, int], arches: tuple[tuple[int, int], ...] = BUILD_ARCHES
                ) -> bool:
    """Whether a build for `arches` runs on a GPU of `capability` (a cubin runs on the same
    major version at an equal or newer minor)."""
    return any(a[0] == capability[0] and a[1] <= capability[1] for a in arches)
