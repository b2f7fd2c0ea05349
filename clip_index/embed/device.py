"""Device decisions for the embed step, made once per process: CUDA or CPU (and a clear refusal
when CUDA was required but is not usable), the precision for the GPU at hand, and how many
decode workers the container's CPU limit can feed."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from clip_index.gpus import CUDA_BUILD, MIN_DRIVER, has_kernels, native_bf16

log = logging.getLogger(__name__)


class CudaUnavailable(RuntimeError):
    """CUDA was required (the pipeline was compiled for a GPU) but cannot be used."""


def resolve_device(device: str = "auto") -> str:
    """'cuda' or 'cpu'. device='cuda' (what a GPU-compiled pipeline passes) fails at once, saying
    why, when CUDA is not usable; 'auto' falls back to the CPU with a warning."""
    import torch

    if device == "cpu":
        return "cpu"
    reason = cuda_problem()
    if reason is None:
        return "cuda"
    if device == "cuda":
        raise CudaUnavailable(f"device='cuda' was asked for (the pipeline was compiled for a "
                              f"GPU) but CUDA is not usable: {reason}")
    if torch.version.cuda:  # a CUDA build without a usable GPU: say so, it may be a mistake
        log.warning("device='auto': CUDA not usable (%s); embedding on the CPU", reason)
    return "cpu"


def cuda_problem() -> str | None:
    """None when CUDA works here; else why not (no GPU, a CPU build, an old driver, a GPU the
    build has no kernels for), in words a user can act on."""
    import torch

    if not torch.version.cuda:
        return f"torch {torch.__version__} is a CPU build"
    try:
        count = torch.cuda.device_count()
        available = torch.cuda.is_available()
    except Exception as exc:  # driver/runtime mismatch raises on some versions
        return f"CUDA failed to initialise ({exc})"
    if not available or count == 0:
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check that "
                f"the task got a GPU (nvidia-smi) and that its driver is >= {MIN_DRIVER} (the "
                f"image's CUDA {CUDA_BUILD} build needs it)")
    arches = tuple(_arch(a) for a in torch.cuda.get_arch_list() if a.startswith("sm_"))
    for index in range(count):
        capability = torch.cuda.get_device_capability(index)
        if arches and not has_kernels(capability, arches):
            return (f"GPU {index} ({torch.cuda.get_device_name(index)}) is sm_"
                    f"{capability[0]}{capability[1]}, and this torch build has kernels only for "
                    f"{torch.cuda.get_arch_list()}")
    try:
        (torch.ones(1, device="cuda") + 1).item()  # the first kernel: fails here, not mid-run
    except Exception as exc:
        return f"a first CUDA kernel failed ({exc})"
    return None


def _arch(name: str) -> tuple[int, int]:
    digits = "".join(c for c in name[3:] if c.isdigit())
    return int(digits[:-1] or 0), int(digits[-1])


def choose_precision(precision: str, device: str, capability: tuple[int, int] | None = None
                     ) -> str:
    """The autocast precision: 'auto' is exact fp32 on the CPU; on a GPU bf16 where it is native
    (sm_80+: A100, L4, H100, H200), fp16 on Volta/Turing (V100, T4: fp16 tensor cores) and on
    P100, fp32 on sm_61 (P4: fp16 runs at 1/64 of fp32 speed). An explicit choice is kept (a
    warning when bf16 is asked for where it is emulated)."""
    if device != "cuda":
        return "fp32" if precision == "auto" else precision
    capability = capability or (0, 0)
    if precision == "auto":
        if native_bf16(capability):
            return "bf16"
        return "fp32" if capability == (6, 1) else "fp16"
    if precision == "bf16" and not native_bf16(capability):
        log.warning("precision='bf16' on a sm_%d%d GPU: no bf16 tensor cores, it will be slow; "
                    "'auto' picks fp16 here", *capability)
    return precision


def cpu_limit(cgroup_root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs the container may use per its cgroup CPU quota (v2 `cpu.max`, v1
    `cpu.cfs_quota_us / cpu.cfs_period_us`); None when unlimited or unknown."""
    root = Path(cgroup_root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 else quota_us / period_us
    return None


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process can keep busy: the affinity set, capped by the cgroup quota (a GKE
    node with 96 cores and an 8-CPU limit gives 8, not 96)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_limit(cgroup_root)
    return max(1, min(cores, math.floor(quota))) if quota else cores


def default_num_workers(device: str, processes: int = 1, cpus: int | None = None) -> int:
    """DataLoader workers per embedding process. On CUDA the workers only read parquet row groups
    and hand over the JPEG bytes (decoding runs on the GPU), so a few suffice: the process's
    share of the CPUs less the one driving the GPU, at most 4. On CPU none: the forward pass
    needs the cores (bench/embed: 94-101% of the ceiling without a worker, 80-96% with one)."""
    if device != "cuda":
        return 0
    share = (cpus if cpus is not None else usable_cpus()) // max(1, processes)
    return max(1, min(4, share - 1))
