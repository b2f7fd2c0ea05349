"""Embed benchmark for a GPU (or, to check the harness, the CPU), one command of a few minutes:

    python -m bench.embed.run --device cuda            # = python -m bench.embed.gpu --device cuda
    python -m bench.embed.gpu --device cpu --images 64 --shards 2 --rows-per-shard 64  # harness

On a unit of download-step image shards (`--shards` × `--rows-per-shard` rows, tiled from
`--images` photo-like JPEGs made by bench.embed.corpus: 256 px keep_ratio, JPEG q95) and one
model (ViT-B-32 with seeded random weights saved as a local checkpoint: the bench machine needs
no network), it measures in one run:

1. the forward-pass ceiling: uint8 batches already on the device, normalised there, the image
   tower under the step's precision (`choose_precision`), `--batch-size` images per pass;
2. `clip-index embed` end to end as its own process (the unit: read → decode → resize →
   forward → write), decode on the device (nvJPEG) and, on CUDA, decode on the CPU workers too;
3. clip-retrieval's `clip inference` on the same images as files, where it installs (the
   machine may have no network: pip is given one quick try).

Writes JSON (``--json``, default ``bench/results/embed-<device>-<gpu>.json``): the machine,
versions, each measurement, and ``images_per_s_per_gpu`` for the planner (clip_index.launch.plan
takes it as ``--embed-img-per-s-per-gpu``); prints a Markdown table for BENCHMARKS.md.
Targets (issue 15): end to end >= 85% of the ceiling; >= 10,000 img/s for ViT-B-32 on H100/H200.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.embed.corpus import describe, make_corpus
from bench.embed.run import PEER_VENV, ROOT, WORK, make_checkpoint, measured, run_peer

log = logging.getLogger("bench.embed.gpu")


def _portable(cmd: list[str]) -> str:
    """The command as one line, with this checkout's paths relative and the interpreter as
    `python`, so a result file says how to rerun it anywhere."""
    root = str(Path(__file__).resolve().parents[2]) + os.sep
    words = ["python" if w == sys.executable else w.replace(root, "") for w in cmd]
    return " ".join(words)


def tile_unit(corpus: Path, shards: int, rows_per_shard: int, rows_per_group: int = 256) -> Path:
    """`shards` image shards of `rows_per_shard` rows each, the corpus's images repeated (with
    unique uids), each marked complete as the download step leaves it."""
    from tests.support.shards import mark_complete

    folder = WORK / f"unit-{corpus.name}-{shards}x{rows_per_shard}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    source = pq.read_table(corpus / "images" / "part-00000.parquet")
    n = source.num_rows
    for shard in range(shards):
        index = [(shard * rows_per_shard + i) % n for i in range(rows_per_shard)]
        table = source.take(pa.array(index))
        uids = pa.array([f"s{shard}-{i:07d}" for i in range(rows_per_shard)])
        table = table.set_column(table.schema.get_field_index("uid"), "uid", uids)
        path = folder / f"part-{shard:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=rows_per_group)
        mark_complete(str(path))
    (folder / "done").write_text("")
    return folder


def ceiling(corpus: Path, ckpt: Path, model: str, device: str, batch: int, precision: str,
            seconds: float) -> dict[str, Any]:
    """The image tower alone on preprocessed uint8 batches already on the device."""
    import io as _io

    import torch
    from PIL import Image

    from clip_index.embed.device import choose_precision
    from clip_index.embed.models import load_model

    clip = load_model(model, str(ckpt), device)
    capability = torch.cuda.get_device_capability() if device == "cuda" else None
    precision = choose_precision(precision, device, capability)
    table = pq.read_table(corpus / "images" / "part-00000.parquet", columns=["image"])
    assert clip.split is not None
    images = [clip.split.pil_stage(Image.open(_io.BytesIO(b)).convert("RGB"))
              for b in table.column("image").to_pylist()[:batch]]
    while len(images) < batch:
        images += images[:batch - len(images)]
    pixels = torch.stack(images).to(device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: kernels chosen, memory pooled
        clip.encode_tensor(pixels, precision)
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 3 * batch:
        clip.encode_tensor(pixels, precision)
        done += batch
        if done % (batch * 10) == 0:
            sync()
    sync()
    wall = time.perf_counter() - start
    return {"images": done, "seconds": wall, "images_per_s": done / wall, "batch_size": batch,
            "precision": precision}


def end_to_end(unit: Path, shards: int, ckpt: Path, model: str, device: str, decode: str,
               extra: list[str]) -> dict[str, Any]:
    """`clip-index embed` on the unit, as its own process."""
    out_dir = WORK / f"out-{device}-{decode}"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "clip_index.cli", "embed", "--images", str(unit), "--shards",
           f"0-{shards - 1}" if shards > 1 else "0", "--output", str(out_dir), "--model", model,
           "--pretrained", str(ckpt), "--device", device, "--decode", decode, *extra]
    m = measured(cmd, WORK / f"embed-{device}-{decode}.log",
                 env=dict(os.environ, HF_HUB_OFFLINE="1"))
    stats = json.loads(m.pop("stdout"))
    busy = sum(s["seconds"] for s in stats["per_shard"])  # summed over the GPU processes
    processes = max(1, min(_gpus(device), shards))
    return {**m, "images": stats["successes"], "streaming_s": busy, "processes": processes,
            "images_per_s_per_process": stats["successes"] / busy,
            "images_per_s": stats["successes"] / busy * processes,
            "command_images_per_s": stats["successes"] / m["wall_s"], "decode": decode,
            "command": _portable(cmd)}


def _gpus(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device == "cuda" else 1


def machine(device: str) -> dict[str, Any]:
    import open_clip
    import torch

    from clip_index.embed.device import usable_cpus

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "open_clip": open_clip.__version__,
                            "cpus": usable_cpus(), "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpus"] = torch.cuda.device_count()
        major, minor = torch.cuda.get_device_capability()
        info["capability"] = f"sm_{major}{minor}"
        smi = shutil.which("nvidia-smi")
        if smi:
            info["driver"] = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=False).stdout.strip().splitlines()[:1]
    return info


def peer(corpus: Path, ckpt: Path, model: str, batch: int, workers: int) -> dict[str, Any] | None:
    """clip-retrieval where it is (or quickly becomes) installed; None otherwise."""
    exe = PEER_VENV / "bin" / "clip-retrieval"
    if not exe.exists():
        log.info("clip-retrieval is not installed in %s: skipped (make install-peer to add "
                 "it where there is network)", PEER_VENV)
        return None
    n = describe(corpus)["images"]
    try:
        return run_peer(exe, corpus / "files", ckpt, model, n,
                        ["--batch_size", str(batch), "--num_prepro_workers", str(workers)])
    except Exception as exc:  # the peer failing must not lose our measurements
        log.warning("clip-retrieval failed: %s", exc)
        return None


def fragment(result: dict[str, Any]) -> str:
    ceil = result["ceiling"]["images_per_s"]
    m = result["machine"]
    lines = [f"{m.get('gpu', 'CPU')} ({m.get('capability', '')}, driver {m.get('driver', '-')}), "
             f"{m['cpus']} CPUs, torch {m['torch']} (CUDA {m['torch_cuda']}), {result['model']} "
             f"random weights, {result['ceiling']['precision']}, batch "
             f"{result['ceiling']['batch_size']}; unit of {result['unit_images']} images.", "",
             "| what | images/s | of the one-device ceiling |", "|---|---|---|",
             f"| forward pass alone (ceiling) | {ceil:,.0f} | 100% |"]
    for run in result["end_to_end"]:
        per = run["images_per_s_per_process"]
        lines.append(f"| clip-index `embed`, decode on {run['decode']}, {run['processes']} "
                     f"process(es) (streaming) | {run['images_per_s']:,.0f} | "
                     f"{per / ceil:.0%} per process |")
        lines.append(f"| same, whole command (start-up, model load included) | "
                     f"{run['command_images_per_s']:,.0f} | "
                     f"{run['command_images_per_s'] / ceil:.0%} |")
    if result.get("clip_retrieval"):
        rate = result["clip_retrieval"]["images_per_s"]
        lines.append(f"| clip-retrieval `clip inference` | {rate:,.0f} | {rate / ceil:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--images", type=int, default=2048, help="unique images made")
    parser.add_argument("--shards", type=int, default=0, help="0: 6 on cuda, 2 on cpu")
    parser.add_argument("--rows-per-shard", type=int, default=0,
                        help="0: 8192 on cuda, 128 on cpu")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the step's default")
    parser.add_argument("--ceiling-s", type=float, default=10.0)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from clip_index.embed.step import default_batch_size

    cuda = args.device == "cuda"
    shards = args.shards or (6 if cuda else 2)
    rows = args.rows_per_shard or (8192 if cuda else 128)
    batch = args.batch_size or default_batch_size(args.device)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    corpus = make_corpus(WORK, args.images)
    unit = tile_unit(corpus, shards, rows)
    ckpt = make_checkpoint(args.model)
    result: dict[str, Any] = {"machine": machine(args.device), "model": args.model,
                              "corpus": describe(corpus), "unit_images": shards * rows}
    result["ceiling"] = ceiling(corpus, ckpt, args.model, args.device, batch, args.precision,
                                args.ceiling_s)
    log.info("ceiling: %.0f img/s", result["ceiling"]["images_per_s"])
    extra = ["--precision", args.precision, "--batch-size", str(batch)]
    result["end_to_end"] = []
    for decode in ("device", "cpu"):
        run = end_to_end(unit, shards, ckpt, args.model, args.device, decode, extra)
        log.info("end to end, decode on %s: %.0f img/s", decode, run["images_per_s"])
        result["end_to_end"].append(run)
    if not args.no_peer:
        result["clip_retrieval"] = peer(corpus, ckpt, args.model, batch, min(8, os.cpu_count()
                                                                             or 1))
    # the ceiling is one device's; the step runs one process per GPU: compare per process
    best = max(r["images_per_s_per_process"] for r in result["end_to_end"])
    result["images_per_s_per_gpu"] = best if cuda else None
    result["ratio_to_ceiling"] = best / result["ceiling"]["images_per_s"]
    result["bench_s"] = time.monotonic() - started
    slug = re.sub(r"[^a-z0-9]+", "-", result["machine"].get("gpu", "cpu").lower()).strip("-")
    out = args.json or ROOT / "bench" / "results" / f"embed-{args.device}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(fragment(result))
    print(f"JSON: {out}")
    return result


if __name__ == "__main__":
    main()
