"""`make gpu-check`: the one command for a lent GPU machine, after `make install`, in well under
8 minutes. In order, stopping at the first failure, exit status non-zero when any fails:

1. the GPU and driver (`nvidia-smi`) and what torch sees; no usable GPU is a failure ("no GPU:
   ...", exit 2), never a run of skipped tests;
2. `pytest -m gpu`: device vs CPU decode row by row, bf16/fp16 embeddings finite and close to
   fp32, nvJPEG pixels against open_clip's, autocast against CPU fp32 (tests/conftest.py turns
   a `-m gpu` session without a GPU into a failure too);
3. the GPU benchmark (bench.embed.gpu): >= 60 s of steady state with warm-up excluded, GPU
   utilisation sampled, device-decoded rows compared with CPU-decoded ones; it fails when the
   steady state fell short or a row differs (cosine < 0.99, or nearer another image).

    python -m bench.embed.gpu_check [--steady-s 60] [--skip-tests] [--skip-bench]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench.embed.gpu_check")
ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 480  # from a fresh clone after `make install`


def describe_gpus() -> str:
    """nvidia-smi's view (name, driver, memory, compute capability), or why there is none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "nvidia-smi: not found (no NVIDIA driver on this machine's PATH)"
    proc = subprocess.run([smi, "--query-gpu=index,name,driver_version,memory.total,compute_cap",
                           "--format=csv"], capture_output=True, text=True, timeout=60,
                          check=False)
    return (proc.stdout or proc.stderr).strip() or f"nvidia-smi exited {proc.returncode}"


def torch_view() -> tuple[str, str | None]:
    """What torch reports, and why CUDA is not usable (None when it is)."""
    import torch

    from clip_index.embed.device import cuda_problem

    problem = cuda_problem()
    line = f"torch {torch.__version__}, CUDA build {torch.version.cuda}"
    if problem is None:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        line += f", {len(names)} GPU(s): {names}"
    return line, problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steady-s", type=float, default=60.0)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.monotonic()
    log.info("GPUs (nvidia-smi):\n%s", describe_gpus())
    line, problem = torch_view()
    log.info("%s", line)
    if problem is not None:
        log.error("no GPU: %s", problem)
        return 2
    if not args.skip_tests:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs",
                               "-p", "no:cacheprovider", "tests"], cwd=ROOT, check=False)
        if proc.returncode != 0:
            log.error("gpu tests failed (pytest exit %d)", proc.returncode)
            return 1
    if not args.skip_bench:
        from bench.embed.gpu import main as bench

        result = bench(["--device", "cuda", "--steady-s", str(args.steady_s), "--no-peer"])
        compare, steady = result["decode_compare"], result["end_to_end"][0]["steady"]
        util = result["end_to_end"][0].get("gpu_utilisation", {})
        log.info("steady state: %.0f img/s over %.0f s; GPU utilisation: %s",
                 steady.get("images_per_s", 0), steady.get("seconds", 0), util)
        failures = []
        if not result["steady_ok"]:
            failures.append(f"steady state {steady.get('seconds', 0):.0f} s < "
                            f"{args.steady_s:.0f} s wanted")
        if not compare["ok"]:
            failures.append(f"device vs CPU decode differ: {compare}")
        if not util or "error" in util:
            failures.append(f"GPU utilisation was not sampled: {util}")
        if failures:
            log.error("gpu benchmark: %s", "; ".join(failures))
            return 1
    elapsed = time.monotonic() - started
    log.info("gpu-check passed in %.0f s", elapsed)
    if elapsed > BUDGET_S:
        log.warning("gpu-check took %.0f s, over its %d s budget (a lent GPU machine's time)",
                    elapsed, BUDGET_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
