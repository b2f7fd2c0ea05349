"""Embed benchmark, one command: ``python -m bench.embed.run`` (``make bench``) on the CPU;
``python -m bench.embed.run --device cuda`` on a GPU machine runs bench.embed.gpu instead.

On one download-step image shard (bench.embed.corpus) and one model (ViT-B-32, random weights
saved as a local checkpoint: no weights can be downloaded here), measures

1. the ceiling: the model's forward pass alone on preprocessed tensors (bench.embed.ceiling);
2. clip-index's embed step end to end (`clip-index embed`: read shard → decode → preprocess →
   forward → write), as its own process; the rate is the step's own (rows / step seconds,
   model load excluded) and the whole command's wall time is reported too;
3. clip-retrieval's `clip inference` (PyPI, in its own venv ``bench/.venvs/clip-retrieval``) on
   the same images as files, with the same checkpoint.

Each is a subprocess; runs are interleaved (ceiling, clip-index, clip-retrieval, then again for
``--repeats``) so that load from other users of the machine hits all alike, and the CPU that
other processes used during each run is recorded. Results: a Markdown fragment (``--out``) and
JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

from bench.embed.corpus import describe, make_corpus

log = logging.getLogger("bench.embed")

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench" / ".work" / "embed"
PEER_VENV = ROOT / "bench" / ".venvs" / "clip-retrieval"
PEER_SPEC = ["clip-retrieval==2.45.0", "setuptools<81", "torch==2.14.1", "torchvision==0.29.1"]


def machine_busy_s() -> float:
    """CPU seconds (all cores) the machine has spent not idle since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait up to `max_wait_s` for the machine to be (nearly) idle; returns busy cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_s()
        time.sleep(3)
        busy = (machine_busy_s() - before) / 3
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy
        log.info("machine busy (%.2f cores used by others), waiting", busy)


def measured(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
             timeout_s: float = 3600) -> dict[str, Any]:
    """Run `cmd`; wall seconds, CPU seconds of its process tree, CPU used by everything else."""
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, wall0 = machine_busy_s(), time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=logf, text=True, env=env,
                              timeout=timeout_s, cwd=ROOT, check=False)
    wall = time.perf_counter() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    others = max(0.0, machine_busy_s() - busy0 - cpu)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log_path}")
    return {"wall_s": wall, "cpu_s": cpu, "others_cores": others / wall, "stdout": proc.stdout}


def make_checkpoint(model: str, seed: int = 0) -> Path:
    """`model` with seeded random weights, saved as a local open_clip checkpoint (state dict)."""
    import torch

    from clip_index.embed.models import load_model

    path = WORK / f"{model}-random-seed{seed}.pt"
    if not path.exists():
        clip = load_model(model, "none", "cpu", seed)
        tmp = path.with_suffix(".tmp")
        torch.save(clip.model.state_dict(), tmp)
        tmp.rename(path)
    return path


def ensure_peer() -> Path | None:
    """clip-retrieval's executable in its own venv (its pins clash with the project's)."""
    exe = PEER_VENV / "bin" / "clip-retrieval"
    if exe.exists():
        return exe
    log.info("installing %s into %s (one time, a few minutes)", PEER_SPEC, PEER_VENV)
    venv.EnvBuilder(with_pip=True, clear=True).create(PEER_VENV)
    proc = subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", *PEER_SPEC],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.warning("clip-retrieval could not be installed: %s", proc.stderr[-2000:])
        return None
    return exe


def run_ceiling(shard: Path, ckpt: Path, model: str, batch: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.embed.ceiling", "--shard", str(shard), "--model", model,
           "--pretrained", str(ckpt), "--batch-size", str(batch)]
    m = measured(cmd, WORK / "ceiling.log")
    out = json.loads(m.pop("stdout").strip().splitlines()[-1])
    return {**m, **out, "command": cmd}


def run_clip_index(images: Path, ckpt: Path, model: str, flags: list[str]) -> dict[str, Any]:
    out_dir = WORK / "out-clip-index"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "clip_index.cli", "embed", "--images", str(images), "--shard",
           "0", "--output-dir", str(out_dir), "--model", model, "--pretrained", str(ckpt),
           "--device", "cpu", *flags]
    m = measured(cmd, WORK / "clip-index.log", env=dict(os.environ, HF_HUB_OFFLINE="1"))
    stats = json.loads(m.pop("stdout"))
    return {**m, "images": stats["successes"], "step_s": stats["seconds"],
            "images_per_s": stats["successes"] / stats["seconds"],
            "command_images_per_s": stats["successes"] / m["wall_s"], "command": cmd}


def startup_baseline(corpus: Path, ckpt: Path, model: str) -> dict[str, Any]:
    """clip-index embed on a one-image copy of the shard: the fixed cost (imports, model load)
    to subtract from a run's CPU seconds, so CPU per image compares with the ceiling's."""
    import pyarrow.parquet as pq

    one = WORK / "one-image"
    shard = one / "part-00000.parquet"
    if not shard.exists():
        one.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(corpus / "images" / "part-00000.parquet").slice(0, 1), shard)
    return run_clip_index(one, ckpt, model, [])


def run_peer(exe: Path, files: Path, ckpt: Path, model: str, n: int,
             flags: list[str]) -> dict[str, Any]:
    out_dir = WORK / "out-clip-retrieval"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [str(exe), "inference", "--input_dataset", str(files), "--output_folder", str(out_dir),
           "--input_format", "files", "--clip_model", f"open_clip:{model}/{ckpt}",
           "--enable_text", "False", "--enable_wandb", "False", *flags]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH="")
    m = measured(cmd, WORK / "clip-retrieval.log", env=env)
    m.pop("stdout")
    return {**m, "images": n, "images_per_s": n / m["wall_s"], "command": cmd}


def versions(peer: Path | None) -> dict[str, str]:
    import open_clip
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "open_clip": open_clip.__version__, "cpu": platform.processor() or platform.machine(),
           "cores": str(os.cpu_count())}
    if peer is not None:
        code = ("import importlib.metadata as m;"
                "print(m.version('clip-retrieval'), m.version('open_clip_torch'))")
        got = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c", code],
                             capture_output=True, text=True, check=False).stdout.split()
        if len(got) == 2:
            out["clip-retrieval"], out["clip-retrieval's open_clip"] = got
    return out


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fragment(results: dict[str, Any]) -> str:
    """The Markdown for notes/BENCHMARKS-*.md."""
    ceiling = median(results["ceiling"], "images_per_s")
    lines = [
        f"Corpus: {results['corpus']['images']} photo-like JPEGs after the download step's "
        f"default 256 px keep_ratio resize (mean {results['corpus']['mean_jpeg_bytes']} B, "
        f"median {results['corpus']['median_pixels']} px), one IMAGES_SCHEMA shard; model "
        f"{results['model']} with random weights from a local checkpoint, CPU, fp32.",
        "",
        "| what | images/s (median) | runs | ratio to ceiling | CPU s / image | "
        "CPU ratio to ceiling | others' load (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    ceiling_cpu = statistics.median(r["cpu_s"] / r["images"] for r in results["ceiling"])
    for key, label in (("ceiling", "forward pass alone (ceiling)"),
                       ("clip_index", "clip-index `embed`, step rate"),
                       ("clip_retrieval", "clip-retrieval `clip inference`")):
        runs = results.get(key) or []
        if not runs:
            continue
        rate = median(runs, "images_per_s")
        fixed = results.get("startup_cpu_s", 0.0) if key == "clip_index" else 0.0
        cpu = statistics.median((r["cpu_s"] - fixed) / r["images"] for r in runs)
        each = ", ".join(f"{r['images_per_s']:.1f}" for r in runs)
        others = ", ".join(f"{r['others_cores']:.2f}" for r in runs)
        lines.append(f"| {label} | {rate:.1f} | {each} | {rate / ceiling:.0%} | {cpu:.3f} | "
                     f"{ceiling_cpu / cpu:.0%} | {others} |")
        if key == "clip_index":
            whole = median(runs, "command_images_per_s")
            lines.append(f"| clip-index `embed`, whole command (model load included) | "
                         f"{whole:.1f} | | {whole / ceiling:.0%} | | |")
    lines += ["", "CPU s / image: the ceiling's forward loop alone; clip-index's whole process "
              f"tree less its fixed start-up cost ({results.get('startup_cpu_s', 0):.1f} CPU s, "
              "measured on a one-image shard); clip-retrieval's whole tree (start-up included). "
              "The CPU ratio estimates the throughput ratio of an idle machine, where both keep "
              "the 2 cores busy.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
              "", "Commands:", ""]
    for key in ("ceiling", "clip_index", "clip_retrieval"):
        if results.get(key):
            lines.append("    " + " ".join(results[key][0]["command"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--device" in sys.argv:  # the GPU (or harness-check) benchmark: bench.embed.gpu
        from bench.embed import gpu

        gpu.main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description="embed benchmark: ceiling / clip-index / "
                                     "clip-retrieval")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="for the ceiling and clip-retrieval (clip-index uses its default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clip-index-flags", default="",
                        help="extra flags for `clip-index embed`, e.g. '--num-workers 0'")
    parser.add_argument("--peer-workers", type=int, default=1,
                        help="clip-retrieval --num_prepro_workers")
    parser.add_argument("--no-peer", action="store_true", help="skip clip-retrieval")
    parser.add_argument("--wait-idle", type=float, default=0,
                        help="before each run, wait up to this many seconds for an idle machine")
    parser.add_argument("--out", type=Path, default=WORK / "fragment.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    WORK.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(WORK, args.images)
    ckpt = make_checkpoint(args.model)
    peer = None if args.no_peer else ensure_peer()
    shard = corpus / "images" / "part-00000.parquet"
    results: dict[str, Any] = {"corpus": describe(corpus), "model": args.model,
                               "versions": versions(peer), "ceiling": [], "clip_index": [],
                               "clip_retrieval": [], "load_before": os.getloadavg()}
    flags = args.clip_index_flags.split()
    base = startup_baseline(corpus, ckpt, args.model)
    results["startup_cpu_s"] = base["cpu_s"]
    for k in range(args.repeats):
        for key in ("ceiling", "clip_index", "clip_retrieval"):
            if key == "clip_retrieval" and peer is None:
                continue
            if args.wait_idle:
                wait_for_idle(args.wait_idle)
            log.info("run %d/%d: %s", k + 1, args.repeats, key)
            if key == "ceiling":
                run = run_ceiling(shard, ckpt, args.model, args.batch_size)
            elif key == "clip_index":
                run = run_clip_index(corpus / "images", ckpt, args.model, flags)
            else:
                assert peer is not None
                run = run_peer(peer, corpus / "files", ckpt, args.model, args.images,
                               ["--batch_size", str(args.batch_size),
                                "--num_prepro_workers", str(args.peer_workers)])
            log.info("%s: %.1f images/s (others used %.2f cores)", key, run["images_per_s"],
                     run["others_cores"])
            results[key].append(run)
    results["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(fragment(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    print(fragment(results))


if __name__ == "__main__":
    main()
