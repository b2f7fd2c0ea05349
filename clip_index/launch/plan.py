"""`clip-index plan`: estimate a run's wall time, GPU hours and cost per step, for the pipeline's
shape, from named rates, with every assumption printed and the reference run (Fondant's 12.8M
DataComp index) beside it.

The shape (pipelines/clip_index.py): load → ParallelFor over `embed_parallelism` (= GPUs / GPUs
per task) embed groups, each a ParallelFor over its ceil(download_parallelism / groups) download
units (which also make the thumbnails) feeding the group's own embed task → write → index →
report. Each loop runs one task per work unit, all in one wave, each task streaming its share
of the shards; so every task pays its start-up once, and a group's wall time is its longest
download unit's followed by its embed task's. Each rate below says whether it was measured
(and by which command) or is an estimate; override any of them with a flag when your own
benchmarks say otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from clip_index.limits import MAX_LOOP_WIDTH

# measured by `python -m bench.index.thumbnails --images 1000` (BENCHMARKS.md, "Thumbnails")
THUMBNAIL_MS = 1.69
THUMBNAIL_BYTES = 3000  # estimate: 924 B measured on the synthetic corpus; photos carry more

# ── Rates (rows, images or vectors per second) and where each figure comes from ───────────────
RATES: dict[str, tuple[float, str]] = {
    # img2dataset's own real-web claim (~100 img/s per core) is the planning rate: real hosts add
    # DNS, slow servers and timeouts. Measured CPU-bound ceiling on loopback: clip-index ~180
    # img/s per core (BENCHMARKS.md, `python -m bench.download.run`).
    "download_rows_per_s_per_vcpu": (100.0, "estimate: img2dataset's real-web claim; our "
                                     "measured CPU-bound ceiling is ~180/core (BENCHMARKS.md)"),
    # decode + open_clip preprocess of a 512x512 JPEG, measured on one core;
    # downloaded images are 256 px, so this is a floor.
    "decode_img_per_s_per_vcpu": (316.0, "measured: decode+preprocess, 512 px JPEG, one "
                                  "core"),
    # the index step's two-stage default (from 250k vectors): 1M x 512 in 139 s on 2 cores,
    # staging, k-means, add and tuning included (BENCHMARKS.md, `bench.index.twostage`);
    # `bench.index.extrapolate` scales it to 12.8M on the 14 vCPU task (k-means by sample x
    # lists, add and tuning by cores, staging one thread): 8.6 min = 1,800 vectors/s per vCPU.
    # (autofaiss's OPQ256_768,IVF16384_HNSW32,PQ256x8, the reference's index, did 287.)
    "index_vectors_per_s_per_vcpu": (1_800.0, "measured: two-stage index, 1M x 512 in 139 s on "
                                     "2 cores, extrapolated to 12.8M on 14 vCPU by "
                                     "bench.index.extrapolate"),
    # the load step reads the source's parquet and writes URL shards: ~200 bytes a row
    "load_rows_per_s": (50_000.0, "estimate: ~10 MB/s of source parquet"),
    # write copies 512 float32 per image (2 KB) and its thumbnail out of the embedding shards
    "write_bytes_per_s": (200e6, "estimate: 200 MB/s"),
    # the download step makes a 128 px WebP of each image from the one it has just decoded and
    # resized (`python -m bench.index.thumbnails --images 1000`, BENCHMARKS.md)
    "thumbnail_ms_per_image": (THUMBNAIL_MS, "measured: bench.index.thumbnails, the download "
                               f"step's WebP from the decoded image, {THUMBNAIL_MS} ms on one "
                               "core"),
}
REFERENCE_SUCCESS_RATE = 0.72  # 9,251,172 of 12.8M downloaded (Fondant's blog, 2024-03)
VIT_B_32_GFLOP = 8.8  # one 224 px image through ViT-B-32's image tower: 4.4 GMACs (open_clip)
GPU_UTILISATION = 0.25  # assumed share of the datasheet tensor rate that inference reaches

# ViT-B-32 images/s per GPU. No GPU has been measured by this project yet (no GPU was lent to
# its sessions): each is an ESTIMATE = datasheet dense FP16/BF16 tensor TFLOPS x 25% / 8.8 GFLOP
# per image, and says so in the output. The reference's own T4 rate (78 img/s: fp32, batch 32,
# one-at-a-time decode) is shown beside the plan as a floor. Replace these with
# `--embed-img-per-s-per-gpu` once `python -m bench.embed.run --device cuda` has run on your GPU.
GPU_TFLOPS: dict[str, float] = {
    "NVIDIA_TESLA_T4": 65.0, "NVIDIA_L4": 121.0, "NVIDIA_TESLA_V100": 125.0,
    "NVIDIA_TESLA_P100": 18.7, "NVIDIA_TESLA_P4": 5.5, "NVIDIA_TESLA_A100": 312.0,
    "NVIDIA_A100_80GB": 312.0, "NVIDIA_H100_80GB": 989.0, "NVIDIA_H100_MEGA_80GB": 989.0,
    "NVIDIA_H200_141GB": 989.0,
}
REFERENCE_T4_IMG_PER_S = 78.0  # 4x T4, 8 h 15 min, 9.25M images (Fondant's blog)

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
TASK_START_S = 120.0        # estimate: scheduling + VM + image pull per Vertex task
SMALL_TASK = (4.0, 16.0)    # vCPU, GiB of the load/plan/write/report tasks (Vertex's default)

# The reference run's published figures (Fondant's blog, 2024-03), shown beside.
REFERENCE_RUN = {
    "rows": 12_800_000, "images": 9_251_172, "success_rate": 0.72,
    "download": "32-core VM off Vertex (time not published)",
    "embed": "4x NVIDIA_TESLA_T4, 8 h 15 min = 33 GPU hours, 311 img/s in total",
    "index": "OPQ256_768,IVF16384_HNSW32,PQ256x8, 2.5 GB, 9.85 ms average search",
    "cost": "not published",
}


@dataclass(frozen=True)
class StepPlan:
    """One step's estimate: `tasks` in one wave, the longest task's hours (`task_h`, start-up
    included), the share of that task spent starting, the step's wall time, all its tasks'
    hours together (`billed_h`), and what they use and cost."""

    step: str
    tasks: int
    task_h: float
    startup_share: float
    wall_h: float
    billed_h: float
    gpu_h: float
    vcpu_h: float
    cost_usd: float
    rate: str


def gib(quantity: str) -> float:
    """A Kubernetes memory quantity ("32G", "16Gi", "512Mi") in GiB."""
    units = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 1024.0}
    q = quantity.rstrip("iB")
    return float(q[:-1]) * units[q[-1].upper()] if q[-1].isalpha() else float(q) / 2**30


def gpu_rate(gpu_type: str) -> float:
    """The estimated ViT-B-32 images/s of one GPU (see GPU_TFLOPS)."""
    return GPU_TFLOPS[gpu_type] * 1e12 * GPU_UTILISATION / (VIT_B_32_GFLOP * 1e9)


def _check(args: argparse.Namespace) -> None:
    if args.rows < 1:
        raise ValueError(f"--rows {args.rows}: expected a row count >= 1")
    if args.gpus < 1 or args.gpu_count < 1 or args.gpus % args.gpu_count:
        raise ValueError(f"--gpus {args.gpus} with --gpu-count {args.gpu_count}: expected a "
                         "multiple of the GPUs per task, both >= 1")
    if args.gpu_type not in GPU_TFLOPS and args.embed_img_per_s_per_gpu is None:
        raise ValueError(f"--gpu-type {args.gpu_type!r}: no rate known; expected one of "
                         f"{sorted(GPU_TFLOPS)} or pass --embed-img-per-s-per-gpu")
    if not 0 < args.success_rate <= 1:
        raise ValueError(f"--success-rate {args.success_rate}: expected a fraction in (0, 1]")
    widths = {"--download-parallelism": args.download_parallelism,
              "--gpus / --gpu-count (embed tasks)": args.gpus // args.gpu_count}
    for name, width in widths.items():
        if not 1 <= width <= MAX_LOOP_WIDTH:
            raise ValueError(f"{name} = {width}: expected 1 to {MAX_LOOP_WIDTH} tasks (Vertex "
                             f"AI refuses a collected input of more than {MAX_LOOP_WIDTH} "
                             "artifacts)")


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    """The plan as a dict: steps, totals, assumptions, the reference run."""
    _check(args)
    per_gpu, gpu_src = ((args.embed_img_per_s_per_gpu, "--embed-img-per-s-per-gpu (yours)")
                        if args.embed_img_per_s_per_gpu else
                        (gpu_rate(args.gpu_type), f"estimate: {GPU_TFLOPS[args.gpu_type]:g} "
                         f"TFLOPS x {GPU_UTILISATION:.0%} / {VIT_B_32_GFLOP} GFLOP"))
    gpu_price = (args.gpu_price_per_h if args.gpu_price_per_h is not None
                 else GPU_PRICE_PER_H.get(args.gpu_type, 0.0))
    shards = math.ceil(args.rows / args.shard_size)
    images = args.rows * args.success_rate
    groups = args.gpus // args.gpu_count
    parts = math.ceil(args.download_parallelism / groups)
    dl_tasks = groups * parts  # the loops' widths; tasks past the last shard have no work
    dl_units = min(dl_tasks, shards)
    emb_units = min(groups, shards)
    # the longest unit holds ceil(shards / units) shards (units are as even as shards allow);
    # a group holds `parts` download units
    dl_unit_rows = math.ceil(shards / dl_units) * args.shard_size
    emb_unit_images = min(parts * math.ceil(shards / dl_units),
                          shards) * args.shard_size * args.success_rate
    from clip_index.pipelines import PipelineSettings

    index = PipelineSettings()  # the index task's compiled defaults
    idx_cpu, idx_gib = float(index.index_cpu), gib(index.index_memory)
    write_cpu, write_gib = float(index.write_cpu), gib(index.write_memory)
    dl_cpu, emb_cpu = float(args.download_cpu), float(args.embed_cpu)

    def price(vcpu: float, mem_gib: float, gpus: int = 0) -> float:
        return vcpu * args.vcpu_price_per_h + mem_gib * args.gib_price_per_h + gpus * gpu_price

    def step(name: str, tasks: int, work_s: float, vcpu: float, mem_gib: float, rate: str,
             gpus: int = 0, busy_s: float | None = None) -> StepPlan:
        """`work_s`: the longest task's work; `busy_s`: all tasks' work (default: balanced)."""
        task_s = TASK_START_S + work_s
        billed_h = (tasks * TASK_START_S + (busy_s if busy_s is not None else
                                            tasks * work_s)) / 3600
        return StepPlan(name, tasks, task_s / 3600, TASK_START_S / task_s, task_s / 3600,
                        billed_h, billed_h * gpus, billed_h * vcpu,
                        billed_h * price(vcpu, mem_gib, gpus), rate)

    # rows/s of a download task: the network's rate, less the CPU its thumbnails take
    thumb_s_per_row = RATES["thumbnail_ms_per_image"][0] / 1e3 * args.success_rate / dl_cpu
    dl_rate = 1 / (1 / (RATES["download_rows_per_s_per_vcpu"][0] * dl_cpu) + thumb_s_per_row)
    # on CUDA the embed step decodes the stored JPEGs on the GPU (nvJPEG): the CPU bound applies
    # only to CPU decoding (--embed-decode cpu, or images that are not JPEG)
    cpu_decode = RATES["decode_img_per_s_per_vcpu"][0] * emb_cpu
    emb_rate = (per_gpu * args.gpu_count if args.embed_decode == "device"
                else min(per_gpu * args.gpu_count, cpu_decode))
    emb_bound = "GPU" if per_gpu * args.gpu_count <= emb_rate else "CPU decode"
    idx_rate = RATES["index_vectors_per_s_per_vcpu"][0] * idx_cpu
    small_cpu, small_gib = SMALL_TASK
    steps = [
        step("load", 1, args.rows / RATES["load_rows_per_s"][0], small_cpu, small_gib,
             f"{RATES['load_rows_per_s'][0]:,.0f} rows/s"),
        step("download", dl_units, dl_unit_rows / dl_rate, dl_cpu, gib(args.download_memory),
             f"{dl_rate:,.0f} rows/s per task, thumbnails included", busy_s=args.rows / dl_rate),
        step("embed", emb_units, emb_unit_images / emb_rate, emb_cpu, gib(args.embed_memory),
             f"{emb_rate:,.0f} img/s per task ({emb_bound}-bound)", gpus=args.gpu_count,
             busy_s=images / emb_rate),
        step("write", 1, images * (2048 + THUMBNAIL_BYTES) / RATES["write_bytes_per_s"][0],
             write_cpu, write_gib, f"200 MB/s of embeddings + {THUMBNAIL_BYTES / 1e3:.0f} kB "
             "thumbnails"),
        step("index", 1, images / idx_rate, idx_cpu, idx_gib, f"{idx_rate:,.0f} vectors/s"),
        step("report", 1, 60.0, small_cpu, small_gib, "one minute"),
    ]
    total = {"wall_h": sum(s.wall_h for s in steps), "gpu_h": sum(s.gpu_h for s in steps),
             "cost_usd": sum(s.cost_usd for s in steps) + RUN_FEE_USD,
             "tasks": sum(s.tasks for s in steps),
             "startup_share": sum(s.tasks for s in steps) * TASK_START_S / 3600
             / sum(s.billed_h for s in steps)}
    floor_h = images / (REFERENCE_T4_IMG_PER_S * args.gpus) / 3600
    embed = steps[2]
    assumptions = [
        f"{args.rows:,} rows in {shards:,} shards of {args.shard_size:,}; {groups} embed "
        f"groups ({args.gpus} GPUs / {args.gpu_count} per task), each of {parts} download "
        f"tasks (--download-parallelism {args.download_parallelism} in {groups} groups: "
        f"{dl_tasks} tasks), {math.ceil(shards / dl_units)} shards each at most, feeding the "
        "group's one embed task; one wave per loop, so each task starts once",
        f"success rate {args.success_rate:.0%} (reference run: 72%) → {images:,.0f} images",
        f"download: {RATES['download_rows_per_s_per_vcpu'][0]:.0f} rows/s per vCPU x "
        f"{args.download_cpu} vCPU ({RATES['download_rows_per_s_per_vcpu'][1]})",
        f"embed: {per_gpu:,.0f} img/s per {args.gpu_type} [{gpu_src}] x {args.gpu_count}"
        + (", JPEGs decoded on the GPU (nvJPEG; its CPU share is not measured)"
           if args.embed_decode == "device" else
           f", at most {RATES['decode_img_per_s_per_vcpu'][0]:.0f} img/s per vCPU of CPU "
           f"decode x {args.embed_cpu} [{RATES['decode_img_per_s_per_vcpu'][1]}]"),
        f"index: {RATES['index_vectors_per_s_per_vcpu'][0]:.0f} vectors/s per vCPU x {idx_cpu:.0f} "
        f"({RATES['index_vectors_per_s_per_vcpu'][1]})",
        f"load: {RATES['load_rows_per_s'][1]}; write: {RATES['write_bytes_per_s'][1]}; "
        f"thumbnails in the download tasks: {RATES['thumbnail_ms_per_image'][1]}",
        f"{TASK_START_S:.0f} s start-up per task (estimate: scheduling, VM, image pull); "
        f"start-up is {embed.startup_share:.0%} of an embed task and "
        f"{steps[1].startup_share:.0%} of a download task; no retries, no quota waits",
        f"embed at the reference's own measured T4 rate ({REFERENCE_T4_IMG_PER_S:.0f} img/s "
        f"per GPU, fp32, batch 32) would take {floor_h:.2f} h on {args.gpus} GPUs: the floor",
        f"prices: on-demand list prices, us-central1, as of {PRICES_AS_OF}: {args.gpu_type} "
        f"${gpu_price}/h, vCPU ${args.vcpu_price_per_h}/h, GiB ${args.gib_price_per_h}/h, "
        f"${RUN_FEE_USD} per run; storage and egress not included",
    ]
    reference_embed_h = 8.25
    against = (f"embed: {embed.wall_h:.2f} h on {args.gpus}x {args.gpu_type} against the "
               f"reference's {reference_embed_h} h on 4x NVIDIA_TESLA_T4: "
               f"{reference_embed_h / embed.wall_h:.1f}x faster at the estimated rate, "
               f"{reference_embed_h / floor_h:.1f}x at the "
               "reference's own per-GPU rate (the floor: more GPUs only)")
    return {"steps": [asdict(s) for s in steps], "total": total, "assumptions": assumptions,
            "against_reference": against, "reference_run": REFERENCE_RUN}


def render(plan: dict[str, Any]) -> str:
    lines = ["| step | tasks | task h | start-up | wall h | GPU h | vCPU h | cost USD | rate |",
             "|" + "---|" * 9]
    for s in plan["steps"]:
        lines.append(f"| {s['step']} | {s['tasks']:,} | {s['task_h']:.2f} | "
                     f"{s['startup_share']:.0%} | {s['wall_h']:.2f} | {s['gpu_h']:.1f} | "
                     f"{s['vcpu_h']:.0f} | {s['cost_usd']:.2f} | {s['rate']} |")
    t = plan["total"]
    lines.append(f"| **total** | {t['tasks']} | | {t['startup_share']:.0%} | "
                 f"**{t['wall_h']:.2f}** | **{t['gpu_h']:.1f}** | | **{t['cost_usd']:.2f}** | |")
    lines += ["", plan["against_reference"], "", "Assumptions:"]
    lines += [f"- {a}" for a in plan["assumptions"]]
    lines += ["", "Reference run (Fondant, DataComp-small, from its blog, 2024-03):"]
    lines += [f"- {k}: {v}" for k, v in plan["reference_run"].items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clip_index.pipelines import PipelineSettings

    d = PipelineSettings()
    parser.add_argument("--rows", type=int, required=True, help="rows (URLs) in the dataset")
    parser.add_argument("--gpu-type", default=d.gpu_type,
                        help=f"Vertex AI accelerator type (default: {d.gpu_type})")
    parser.add_argument("--gpus", type=int, default=d.gpu_count * d.embed_parallelism,
                        help="GPUs the run may use at once, your quota: embed tasks = gpus / "
                             f"gpu-count (default: {d.gpu_count * d.embed_parallelism})")
    parser.add_argument("--gpu-count", type=int, default=d.gpu_count,
                        help=f"GPUs per embed task (default: {d.gpu_count})")
    parser.add_argument("--download-parallelism", type=int, default=d.download_parallelism,
                        help=f"download tasks (default: {d.download_parallelism})")
    parser.add_argument("--shard-size", type=int, default=10_000,
                        help="rows per shard (default: 10000)")
    parser.add_argument("--success-rate", type=float, default=REFERENCE_SUCCESS_RATE,
                        help="share of URLs that download (default: the reference's 0.72)")
    parser.add_argument("--download-cpu", type=int, default=int(d.download_cpu),
                        help=f"vCPUs per download task (default: {d.download_cpu})")
    parser.add_argument("--download-memory", default=d.download_memory,
                        help=f"memory per download task (default: {d.download_memory})")
    parser.add_argument("--embed-cpu", type=int, default=int(d.embed_cpu),
                        help=f"vCPUs per embed task (default: {d.embed_cpu})")
    parser.add_argument("--embed-memory", default=d.embed_memory,
                        help=f"memory per embed task (default: {d.embed_memory})")
    parser.add_argument("--embed-decode", choices=("device", "cpu"), default="device",
                        help="where the embed step decodes JPEGs: device (nvJPEG on the GPU, "
                             "the default on CUDA) or cpu (bounded by the embed task's vCPUs)")
    parser.add_argument("--embed-img-per-s-per-gpu", type=float, default=None,
                        help="your measured embed rate per GPU, img/s (overrides the estimate)")
    parser.add_argument("--gpu-price-per-h", type=float, default=None,
                        help="USD per GPU hour (default: the table's list price)")
    parser.add_argument("--vcpu-price-per-h", type=float, default=VCPU_PRICE_PER_H,
                        help=f"USD per vCPU hour (default: {VCPU_PRICE_PER_H})")
    parser.add_argument("--gib-price-per-h", type=float, default=GIB_PRICE_PER_H,
                        help=f"USD per GiB hour (default: {GIB_PRICE_PER_H})")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def command(args: argparse.Namespace) -> int:
    plan = estimate(args)
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    return 0
