"""`clip-index plan`: estimate a run's wall time, GPU hours and cost per step from measured
rates, with every assumption printed, and the reference run (Fondant's 12.8M DataComp index)
beside it.

The model: shards of `shard_size` rows go through ParallelFor(download → embed) `parallelism` at a
time (= GPUs / GPUs per task); a download task's rate is per vCPU, an embed task's rate is the
lower of its GPUs' rate and its vCPUs' decode rate; then write and index run once. Each figure
below names its source; override any of them with a flag when your own benchmarks say otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

# ── Rates (images or rows per second) and where each figure comes from ────────────────────────
# REFERENCES = the team's ../shared/REFERENCES.md (measured baselines and the reference run).
RATES: dict[str, tuple[float, str]] = {
    # img2dataset's own claim, ~100 img/s per core, kept as the planning rate: real hosts add
    # DNS, slow servers and timeouts. CPU-bound ceilings on loopback (bench/download,
    # BENCHMARKS.md): clip-index ~180 img/s per core, img2dataset ~100 on the same corpus.
    "download_rows_per_s_per_vcpu": (100.0, "img2dataset claim; clip-index's CPU-bound "
                                     "ceiling ~180/core (BENCHMARKS.md)"),
    # decode + open_clip preprocess of a 512x512 JPEG on one core (REFERENCES §5); downloaded
    # images are 256 px, so this is a floor.
    "decode_img_per_s_per_vcpu": (316.0, "decode+preprocess, 512 px JPEG, one core (REF §5)"),
    # autofaiss OPQ256_768,IVF16384_HNSW32,PQ256x8 on 1M x 512: 29 min on 2 cores (REFERENCES
    # §5) = 287 vectors/s per core; assumed to scale with cores.
    "index_vectors_per_s_per_vcpu": (287.0, "autofaiss, 1M x 512 in 29 min on 2 cores (REF §5)"),
}
REFERENCE_SUCCESS_RATE = 0.72  # 9,251,172 of 12.8M downloaded (Fondant blog, REFERENCES §1)

# ViT-B-32 images/s per GPU. T4: the reference run (4x T4, 8 h 15 min, 9.25M images = 78 img/s
# per GPU, batch 32, fp32, one-at-a-time decode: a floor for this pipeline). A100: clip-retrieval,
# 7,000 img/s on 8x A100 (875 per GPU, bound by CPU resizing) (REFERENCES §2). The others are NOT
# measured: the T4 floor scaled by NVIDIA's datasheet dense FP16 tensor TFLOPS (T4 65, L4 121,
# V100 125, A100 312, H100 SXM 989, H200 989), marked "estimate" in the output.
GPU_RATES: dict[str, tuple[float, str]] = {
    "NVIDIA_TESLA_T4": (78.0, "reference run: 4x T4, 8 h 15 min (REF §1)"),
    "NVIDIA_L4": (145.0, "estimate: T4 x 121/65 TFLOPS"),
    "NVIDIA_TESLA_V100": (150.0, "estimate: T4 x 125/65 TFLOPS"),
    "NVIDIA_TESLA_A100": (875.0, "clip-retrieval: 7,000 img/s on 8x A100 (REF §2)"),
    "NVIDIA_A100_80GB": (875.0, "as NVIDIA_TESLA_A100 (REF §2)"),
    "NVIDIA_H100_80GB": (1187.0, "estimate: T4 x 989/65 TFLOPS"),
    "NVIDIA_H100_MEGA_80GB": (1187.0, "estimate: T4 x 989/65 TFLOPS"),
    "NVIDIA_H200_141GB": (1187.0, "estimate: as H100"),
}

# ── On-demand list prices, USD per hour, Vertex AI custom training (which pipeline tasks are
# billed at), us-central1, as we recorded them in 2025 from cloud.google.com/vertex-ai/pricing;
# NOT re-checked (this machine has no web access). Prices change and differ by region: pass
# --gpu-price-per-h / --vcpu-price-per-h / --gib-price-per-h with your own.
PRICES_AS_OF = "2025 (not re-checked)"
GPU_PRICE_PER_H: dict[str, float] = {
    "NVIDIA_TESLA_T4": 0.4025, "NVIDIA_L4": 0.644, "NVIDIA_TESLA_V100": 2.852,
    "NVIDIA_TESLA_P100": 1.679, "NVIDIA_TESLA_P4": 0.69, "NVIDIA_TESLA_A100": 3.3741,
    "NVIDIA_A100_80GB": 4.5172, "NVIDIA_H100_80GB": 9.7955, "NVIDIA_H100_MEGA_80GB": 11.3,
    "NVIDIA_H200_141GB": 12.0,
}
VCPU_PRICE_PER_H = 0.0379   # n1/e2-class vCPU hour
GIB_PRICE_PER_H = 0.0051    # memory GiB hour
RUN_FEE_USD = 0.03          # Vertex AI Pipelines, per run
TASK_START_S = 120.0        # assumption: scheduling + image pull per Vertex task

# The reference run's published figures (Fondant blog, 2024-03; REFERENCES §1), shown beside.
REFERENCE_RUN = {
    "rows": 12_800_000, "images": 9_251_172, "success_rate": 0.72,
    "download": "32-core VM off Vertex (time not published)",
    "embed": "4x NVIDIA_TESLA_T4, 8 h 15 min = 33 GPU hours, 311 img/s in total",
    "index": "OPQ256_768,IVF16384_HNSW32,PQ256x8, 2.5 GB, 9.85 ms average search",
    "cost": "not published",
}


@dataclass(frozen=True)
class StepPlan:
    """One step's estimate."""

    step: str
    tasks: int
    wall_h: float
    gpu_h: float
    vcpu_h: float
    cost_usd: float
    rate: str


def _gib(quantity: str) -> float:
    units = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 1024.0}
    q = quantity.rstrip("iB")
    return float(q[:-1]) * units[q[-1].upper()] if q[-1].isalpha() else float(q) / 2**30


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    """The plan as a dict: steps, totals, assumptions."""
    if args.rows < 1:
        raise ValueError(f"--rows {args.rows}: expected a row count >= 1")
    if args.gpus < 1 or args.gpu_count < 1 or args.gpus % args.gpu_count:
        raise ValueError(f"--gpus {args.gpus} with --gpu-count {args.gpu_count}: expected a "
                         "multiple of the GPUs per task, both >= 1")
    if args.gpu_type not in GPU_RATES and args.embed_img_per_s_per_gpu is None:
        raise ValueError(f"--gpu-type {args.gpu_type!r}: no rate known; expected one of "
                         f"{sorted(GPU_RATES)} or pass --embed-img-per-s-per-gpu")
    if not 0 < args.success_rate <= 1:
        raise ValueError(f"--success-rate {args.success_rate}: expected a fraction in (0, 1]")
    gpu_rate, gpu_src = ((args.embed_img_per_s_per_gpu, "--embed-img-per-s-per-gpu")
                         if args.embed_img_per_s_per_gpu else GPU_RATES[args.gpu_type])
    gpu_price = (args.gpu_price_per_h if args.gpu_price_per_h is not None
                 else GPU_PRICE_PER_H.get(args.gpu_type, 0.0))
    parallel = args.gpus // args.gpu_count
    shards = math.ceil(args.rows / args.shard_size)
    images = args.rows * args.success_rate
    from clip_index.pipelines import PipelineSettings

    index = PipelineSettings()  # the index task's compiled defaults
    idx_cpu = float(index.index_cpu)
    idx_gib = float(re.sub("[A-Za-z]", "", index.index_memory))
    dl_cpu, emb_cpu = float(args.download_cpu), float(args.embed_cpu)
    waves = math.ceil(shards / parallel)

    def cost(task_h: float, vcpu: float, gib: float, gpus: int = 0) -> float:
        return task_h * (vcpu * args.vcpu_price_per_h + gib * args.gib_price_per_h
                         + gpus * gpu_price)

    dl_rate = RATES["download_rows_per_s_per_vcpu"][0] * dl_cpu
    dl_task_s = args.shard_size / dl_rate + TASK_START_S
    emb_rate = min(gpu_rate * args.gpu_count,
                   RATES["decode_img_per_s_per_vcpu"][0] * emb_cpu)
    emb_task_s = args.shard_size * args.success_rate / emb_rate + TASK_START_S
    idx_rate = RATES["index_vectors_per_s_per_vcpu"][0] * idx_cpu
    idx_s = images / idx_rate + TASK_START_S
    write_s = images * 2048 / 200e6 + TASK_START_S  # 512 float32 per row at 200 MB/s
    dl_h, emb_h = dl_task_s * shards / 3600, emb_task_s * shards / 3600
    steps = [
        StepPlan("download", shards, waves * dl_task_s / 3600, 0.0, dl_h * dl_cpu,
                 cost(dl_h, dl_cpu, _gib(args.download_memory)),
                 f"{dl_rate:.0f} rows/s per task"),
        StepPlan("embed", shards, waves * emb_task_s / 3600, emb_h * args.gpu_count,
                 emb_h * emb_cpu, cost(emb_h, emb_cpu, _gib(args.embed_memory), args.gpu_count),
                 f"{emb_rate:.0f} img/s per task"),
        StepPlan("write", 1, write_s / 3600, 0.0, write_s / 3600 * 8,
                 cost(write_s / 3600, 8, 32), "200 MB/s"),
        StepPlan("index", 1, idx_s / 3600, 0.0, idx_s / 3600 * idx_cpu,
                 cost(idx_s / 3600, idx_cpu, idx_gib), f"{idx_rate:.0f} vectors/s"),
    ]
    total = {"wall_h": sum(s.wall_h for s in steps), "gpu_h": sum(s.gpu_h for s in steps),
             "cost_usd": sum(s.cost_usd for s in steps) + RUN_FEE_USD}
    assumptions = [
        f"{args.rows:,} rows in {shards:,} shards of {args.shard_size:,}; {parallel} shards at "
        f"once (parallelism = {args.gpus} GPUs / {args.gpu_count} per task), {waves} waves",
        f"success rate {args.success_rate:.0%} (reference run: 72%) → {images:,.0f} images",
        f"download: {RATES['download_rows_per_s_per_vcpu'][0]:.0f} rows/s per vCPU x "
        f"{args.download_cpu} vCPU ({RATES['download_rows_per_s_per_vcpu'][1]}); assumes the "
        "network keeps up",
        f"embed: min({gpu_rate:.0f} img/s per {args.gpu_type} [{gpu_src}] x {args.gpu_count}, "
        f"{RATES['decode_img_per_s_per_vcpu'][0]:.0f} img/s per vCPU decode x {args.embed_cpu})",
        f"index: {RATES['index_vectors_per_s_per_vcpu'][0]:.0f} vectors/s per vCPU x {idx_cpu:.0f} "
        f"({RATES['index_vectors_per_s_per_vcpu'][1]}), assumed linear in cores",
        f"{TASK_START_S:.0f} s start-up per task (scheduling, image pull); no retries, no quota "
        "waits",
        f"prices: on-demand list prices, us-central1, as of {PRICES_AS_OF}: {args.gpu_type} "
        f"${gpu_price}/h, vCPU ${args.vcpu_price_per_h}/h, GiB ${args.gib_price_per_h}/h, "
        f"${RUN_FEE_USD} per run; storage and egress not included",
    ]
    return {"steps": [asdict(s) for s in steps], "total": total, "assumptions": assumptions,
            "reference_run": REFERENCE_RUN}


def render(plan: dict[str, Any]) -> str:
    lines = ["| step | tasks | wall h | GPU h | vCPU h | cost USD | rate |", "|" + "---|" * 7]
    for s in plan["steps"]:
        lines.append(f"| {s['step']} | {s['tasks']:,} | {s['wall_h']:.2f} | {s['gpu_h']:.1f} | "
                     f"{s['vcpu_h']:.0f} | {s['cost_usd']:.2f} | {s['rate']} |")
    t = plan["total"]
    lines.append(f"| **total** | | **{t['wall_h']:.2f}** | **{t['gpu_h']:.1f}** | | "
                 f"**{t['cost_usd']:.2f}** | |")
    lines += ["", "Assumptions:"] + [f"- {a}" for a in plan["assumptions"]]
    lines += ["", "Reference run (Fondant, DataComp-small, REFERENCES §1):"]
    lines += [f"- {k}: {v}" for k, v in plan["reference_run"].items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clip_index.pipelines import PipelineSettings

    d = PipelineSettings()
    parser.add_argument("--rows", type=int, required=True, help="rows (URLs) in the dataset")
    parser.add_argument("--gpu-type", default=d.gpu_type)
    parser.add_argument("--gpus", type=int, default=d.gpu_count * d.parallelism,
                        help="GPUs the run may use at once (your quota)")
    parser.add_argument("--gpu-count", type=int, default=d.gpu_count, help="GPUs per embed task")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--success-rate", type=float, default=REFERENCE_SUCCESS_RATE)
    parser.add_argument("--download-cpu", type=int, default=int(d.download_cpu))
    parser.add_argument("--download-memory", default=d.download_memory)
    parser.add_argument("--embed-cpu", type=int, default=int(d.embed_cpu))
    parser.add_argument("--embed-memory", default=d.embed_memory)
    parser.add_argument("--embed-img-per-s-per-gpu", type=float, default=None,
                        help="your measured embed rate (overrides the table)")
    parser.add_argument("--gpu-price-per-h", type=float, default=None)
    parser.add_argument("--vcpu-price-per-h", type=float, default=VCPU_PRICE_PER_H)
    parser.add_argument("--gib-price-per-h", type=float, default=GIB_PRICE_PER_H)
    parser.add_argument("--json", action="store_true")


def command(args: argparse.Namespace) -> int:
    plan = estimate(args)
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    return 0
