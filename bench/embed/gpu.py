"""Embed benchmark for a GPU (or, to check the harness, the CPU), one command of a few minutes:

    python -m bench.embed.run --device cuda            # = python -m bench.embed.gpu --device cuda
    python -m bench.embed.gpu --device cpu --images 64 --shards 2 --rows-per-shard 64 \
        --steady-s 0                                    # the harness, on a CPU
    make gpu-check                                      # this, after the gpu tests (gpu_check.py)

On a unit of download-step image shards (`--rows-per-shard` rows each, tiled from `--images`
photo-like JPEGs made by bench.embed.corpus: 256 px keep_ratio, JPEG q95) and one model
(ViT-B-32 with seeded random weights saved as a local checkpoint: the bench machine needs no
network), it measures in one run:

1. the forward-pass ceiling: uint8 batches already on the device, normalised there, the image
   tower under the step's precision (`choose_precision`), `--batch-size` images per pass;
2. `clip-index embed` end to end as its own process (read → decode → resize → forward →
   write), decode on the device (nvJPEG), for at least `--steady-s` seconds of steady state:
   the unit holds as many shards as the ceiling's rate fills in that time (shards beyond the
   `--shards` real files are symlinks to them: the same bytes, read again). The steady rate
   runs from the end of each process's first shard (start-up, model load, cuDNN autotuning and
   the first batches excluded) to the end of its last, timed by the shards' stats files, the
   step's own "done" markers. GPU utilisation and memory are sampled every 0.5 s by
   `nvidia-smi` and summarised over that window;
3. the same with decode on the CPU workers (on CUDA), on the real shards only, and the two
   runs' rows compared row by row: cosine of each uid's two embeddings (>= 0.99 expected) and
   whether each device-decoded row's nearest CPU-decoded row shows the same image (none
   swapped: the check for a decode that wrote into memory still in use, pytorch/vision#9606);
4. clip-retrieval's `clip inference` on the same images as files, where it installs (the
   machine may have no network: pip is given one quick try; `--no-peer` skips it).

Writes JSON (``--json``, default ``bench/results/embed-<device>-<gpu>.json``): the machine,
versions, each measurement, and ``images_per_s_per_gpu`` for the planner (clip_index.launch.plan
takes it as ``--embed-img-per-s-per-gpu``); prints a Markdown table for BENCHMARKS.md.
Targets (issue 15): end to end >= 85% of the ceiling; >= 10,000 img/s for ViT-B-32 on H100/H200.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
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


def tile_unit(corpus: Path, shards: int, rows_per_shard: int, rows_per_group: int = 256,
              real: int | None = None) -> Path:
    """`shards` image shards of `rows_per_shard` rows each, the corpus's images repeated (with
    unique uids), each marked complete as the download step leaves it. Only the first `real`
    shards are files; the others are symlinks to them (same rows and uids), so that a unit of a
    minute of GPU time costs no more disk than `real` shards."""
    from tests.support.shards import mark_complete

    real = min(real or shards, shards)
    folder = WORK / f"unit-{corpus.name}-{shards}x{rows_per_shard}-{real}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    source = pq.read_table(corpus / "images" / "part-00000.parquet")
    n = source.num_rows
    for shard in range(shards):
        path = folder / f"part-{shard:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        if shard >= real:
            path.symlink_to(f"part-{shard % real:05d}.parquet")
        else:
            index = [(shard * rows_per_shard + i) % n for i in range(rows_per_shard)]
            table = source.take(pa.array(index))
            uids = pa.array([f"s{shard}-{i:07d}" for i in range(rows_per_shard)])
            table = table.set_column(table.schema.get_field_index("uid"), "uid", uids)
            pq.write_table(table, path, row_group_size=rows_per_group)
        mark_complete(str(path))
    (folder / "done").write_text("")
    return folder


def image_of(uid: str, rows_per_shard: int, corpus_images: int) -> int:
    """The corpus image a tiled row shows (tile_unit's layout)."""
    shard, row = uid[1:].split("-")
    return (int(shard) * rows_per_shard + int(row)) % corpus_images


class GpuSampler:
    """`nvidia-smi` sampled every `interval_ms` on a thread: (unix time, GPU index, utilisation
    %, memory used MiB) rows, for the steady window of a run."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.samples: list[tuple[float, int, float, float]] = []
        self.error: str | None = None
        self.interval_ms = interval_ms
        self.proc: subprocess.Popen[str] | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        smi = shutil.which("nvidia-smi")
        if not smi:
            self.error = "nvidia-smi not found"
            return self
        self.proc = subprocess.Popen(
            [smi, "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        self.thread = threading.Thread(target=self._read, name="gpu-sampler", daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                index, util, mem = (x.strip() for x in line.split(","))
                self.samples.append((time.time(), int(index), float(util), float(mem)))
            except ValueError:  # "[N/A]" on GPUs that do not report it
                continue

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.thread is not None:
            self.thread.join(timeout=10)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Per GPU: samples, mean/median/10th-percentile utilisation, peak memory, in the
        window [start, end] (unix seconds)."""
        if self.error:
            return {"error": self.error}
        out: dict[str, Any] = {}
        for gpu in sorted({s[1] for s in self.samples}):
            rows = [s for s in self.samples if s[1] == gpu and start <= s[0] <= end]
            if not rows:
                out[str(gpu)] = {"samples": 0}
                continue
            utils = sorted(r[2] for r in rows)
            out[str(gpu)] = {"samples": len(rows), "util_mean": statistics.fmean(utils),
                             "util_median": statistics.median(utils),
                             "util_p10": utils[len(utils) // 10],
                             "memory_peak_mib": max(r[3] for r in rows)}
        return out


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
    """`clip-index embed` on the unit's first `shards` shards, as its own process; the steady
    rate from the shards' stats files (see the module docstring), GPU utilisation over it."""
    out_dir = WORK / f"out-{device}-{decode}"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "clip_index.cli", "embed", "--images", str(unit), "--shards",
           f"0-{shards - 1}" if shards > 1 else "0", "--output-dir", str(out_dir), "--model", model,
           "--pretrained", str(ckpt), "--device", device, "--decode", decode, *extra]
    with GpuSampler() as sampler:
        m = measured(cmd, WORK / f"embed-{device}-{decode}.log",
                     env=dict(os.environ, HF_HUB_OFFLINE="1"))
    stats = json.loads(m.pop("stdout"))
    busy = sum(s["seconds"] for s in stats["per_shard"])  # summed over the GPU processes
    processes = max(1, min(_gpus(device), shards))
    steady = steady_state(out_dir, stats["per_shard"], processes)
    result = {**m, "images": stats["successes"], "streaming_s": busy, "processes": processes,
              "images_per_s_per_process": stats["successes"] / busy,
              "images_per_s": stats["successes"] / busy * processes,
              "command_images_per_s": stats["successes"] / m["wall_s"], "decode": decode,
              "output": str(out_dir), "steady": steady, "command": _portable(cmd)}
    if device == "cuda" and steady.get("window"):
        result["gpu_utilisation"] = sampler.summary(*steady["window"])
    return result


def steady_state(out_dir: Path, per_shard: list[dict[str, Any]], processes: int
                 ) -> dict[str, Any]:
    """Rows per second from the end of each process's first shard to the end of its last (the
    stats files' modification times: each is written when its shard's last row is), summed
    over the processes (the step deals shards round-robin, shard_paths[rank::processes]); the window
    is the one all processes were streaming in."""
    order = [int(s["shard"]) for s in per_shard]
    rows = {int(s["shard"]): int(s.get("rows", 0)) for s in per_shard}
    rates, windows = [], []
    for rank in range(processes):
        mine = order[rank::processes]
        if len(mine) < 2:
            continue
        ends = sorted((os.path.getmtime(out_dir / f"part-{s:05d}_stats.json"), s) for s in mine)
        (start, _), (end, _) = ends[0], ends[-1]
        if end <= start:
            continue
        rates.append(sum(rows[s] for _, s in ends[1:]) / (end - start))
        windows.append((start, end))
    if not windows:
        return {}
    start, end = max(w[0] for w in windows), min(w[1] for w in windows)
    return {"images_per_s": sum(rates), "seconds": min(w[1] - w[0] for w in windows),
            "window": (start, end) if end > start else windows[0]}


def compare_decodes(device_out: Path, cpu_out: Path, shards: int, rows_per_shard: int,
                    corpus_images: int) -> dict[str, Any]:
    """Row by row over the first `shards` shards: each uid's device-decoded and CPU-decoded
    embeddings (cosine), and whether the nearest CPU-decoded row to each device-decoded one
    shows the same corpus image (tiling repeats images, so "the same image", not "the same
    uid")."""
    cosines: list[float] = []
    swapped = rows = 0
    for shard in range(shards):
        name = f"part-{shard:05d}.parquet"
        device_rows = [r for r in pq.read_table(device_out / name,
                                                columns=["uid", "embedding"]).to_pylist()
                       if r["embedding"] is not None]
        cpu_rows = [r for r in pq.read_table(cpu_out / name,
                                             columns=["uid", "embedding"]).to_pylist()
                    if r["embedding"] is not None]
        cpu_uids = [r["uid"] for r in cpu_rows]
        position = {uid: k for k, uid in enumerate(cpu_uids)}
        device_rows = [r for r in device_rows if r["uid"] in position]
        if not device_rows:
            continue
        a = np.asarray([r["embedding"] for r in device_rows], dtype=np.float32)
        b = np.asarray([r["embedding"] for r in cpu_rows], dtype=np.float32)
        own = b[[position[r["uid"]] for r in device_rows]]
        cosines.extend((a * own).sum(axis=1).tolist())
        for row, j in zip(device_rows, (a @ b.T).argmax(axis=1)):
            if image_of(cpu_uids[j], rows_per_shard, corpus_images) != image_of(
                    row["uid"], rows_per_shard, corpus_images):
                swapped += 1
        rows += len(device_rows)
    values = np.asarray(cosines) if cosines else np.zeros(0)
    return {"rows": rows, "cosine_min": float(values.min()) if rows else None,
            "cosine_mean": float(values.mean()) if rows else None,
            "below_0_99": int((values < 0.99).sum()), "swapped": swapped,
            "ok": bool(rows) and int((values < 0.99).sum()) == 0 and swapped == 0}


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
        steady = run.get("steady") or {}
        if steady:
            lines.append(f"| same, steady state ({steady['seconds']:.0f} s, warm-up excluded) | "
                         f"{steady['images_per_s']:,.0f} | "
                         f"{steady['images_per_s'] / run['processes'] / ceil:.0%} per process |")
    if result.get("clip_retrieval"):
        rate = result["clip_retrieval"]["images_per_s"]
        lines.append(f"| clip-retrieval `clip inference` | {rate:,.0f} | {rate / ceil:.0%} |")
    util = result["end_to_end"][0].get("gpu_utilisation")
    if util:
        lines += ["", f"GPU utilisation over the steady window (nvidia-smi, 0.5 s): {util}"]
    compare = result.get("decode_compare")
    if compare:
        lines += ["", f"Device vs CPU decode, {compare['rows']:,} rows: cosine min "
                      f"{compare['cosine_min']}, below 0.99: {compare['below_0_99']}, "
                      f"swapped: {compare['swapped']}"]
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
    parser.add_argument("--steady-s", type=float, default=-1,
                        help="seconds of steady state the device-decode run must reach (the "
                             "unit is sized for it from the ceiling); -1: 60 on cuda, 0 on cpu")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from clip_index.embed.step import default_batch_size

    cuda = args.device == "cuda"
    shards = args.shards or (6 if cuda else 2)
    rows = args.rows_per_shard or (8192 if cuda else 128)
    batch = args.batch_size or default_batch_size(args.device)
    steady_s = args.steady_s if args.steady_s >= 0 else (60.0 if cuda else 0.0)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    corpus = make_corpus(WORK, args.images)
    ckpt = make_checkpoint(args.model)
    result: dict[str, Any] = {"machine": machine(args.device), "model": args.model,
                              "corpus": describe(corpus)}
    result["ceiling"] = ceiling(corpus, ckpt, args.model, args.device, batch, args.precision,
                                args.ceiling_s)
    rate = result["ceiling"]["images_per_s"]
    log.info("ceiling: %.0f img/s", rate)
    processes = max(1, min(_gpus(args.device), shards))
    # at the ceiling's rate (an upper bound) each process streams >= steady_s after its first
    # shard, the warm-up; 10% over for the stats files' timing
    per_process = math.ceil(rate * steady_s * 1.1 / rows) + 1 if steady_s else 0
    unit_shards = max(shards, per_process * processes)
    unit = tile_unit(corpus, unit_shards, rows, real=shards)
    result["unit_images"] = unit_shards * rows
    result["steady_s_wanted"] = steady_s
    extra = ["--precision", args.precision, "--batch-size", str(batch)]
    result["end_to_end"] = []
    for decode in ("device", "cpu"):
        # the CPU decode (on CUDA the slow path, for comparison) runs on the real shards
        n = unit_shards if decode == "device" or not cuda else shards
        run = end_to_end(unit, n, ckpt, args.model, args.device, decode, extra)
        log.info("end to end, decode on %s: %.0f img/s streaming, %.0f img/s steady over "
                 "%.0f s", decode, run["images_per_s"], run["steady"].get("images_per_s", 0),
                 run["steady"].get("seconds", 0))
        result["end_to_end"].append(run)
    device_run, cpu_run = result["end_to_end"]
    result["steady_ok"] = device_run["steady"].get("seconds", 0) >= steady_s
    result["decode_compare"] = compare_decodes(
        Path(device_run["output"]), Path(cpu_run["output"]), shards, rows,
        result["corpus"]["images"])
    log.info("device vs CPU decode: %s", result["decode_compare"])
    if not args.no_peer:
        result["clip_retrieval"] = peer(corpus, ckpt, args.model, batch, min(8, os.cpu_count()
                                                                             or 1))
    # the ceiling is one device's; the step runs one process per GPU: compare per process
    best = max(r["images_per_s_per_process"] for r in result["end_to_end"])
    if device_run["steady"]:
        best = device_run["steady"]["images_per_s"] / device_run["processes"]
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
