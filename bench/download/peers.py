"""The two downloaders under test, each run as a measured subprocess.

img2dataset lives in its own virtualenv (``bench/.venvs/img2dataset``: its pins clash with the
project's), created on first use. clip-index runs with the project's interpreter through its CLI
(``python -m clip_index.cli download``); when that CLI is missing the tool is reported as
"not available" instead of failing the benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import tomllib

from bench.download.measure import Measurement, die_with_parent, run_measured

logger = logging.getLogger(__name__)

IMG2DATASET_SPEC = "img2dataset==1.47.0"
IMG2DATASET_EXTRA = ["setuptools<81"]  # it imports pkg_resources
RESIZE_MODES = {"keep_ratio": "keep_ratio", "center_crop": "center_crop", "border": "border",
                "no": "no"}  # clip-index name -> img2dataset name


@dataclass
class ToolRun:
    """One measured run of one tool (or the reason it could not run)."""

    tool: str
    label: str
    available: bool
    total: int = 0
    successes: int = 0
    measurement: Measurement | None = None
    out_dir: str = ""
    command: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def images_per_s(self) -> float:
        m = self.measurement
        return self.successes / m.wall_s if m and m.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        m = self.measurement
        return 1000 * m.cpu_s / self.successes if m and self.successes else 0.0

    def as_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "tool": self.tool, "label": self.label, "available": self.available,
            "total": self.total, "successes": self.successes,
            "images_per_s": round(self.images_per_s, 1),
            "cpu_ms_per_image": round(self.cpu_ms_per_image, 2),
            "measurement": None if m is None else dataclasses.asdict(m),
            "out_dir": self.out_dir, "command": self.command, "params": self.params,
            "note": self.note,
        }


def median_run(runs: list[ToolRun]) -> ToolRun:
    """The run with the median images/s (the lower middle of an even count), its tries'
    images/s recorded in its params."""
    ordered = sorted(runs, key=lambda r: r.images_per_s)
    median = ordered[(len(ordered) - 1) // 2]
    median.params["runs_images_per_s"] = [round(r.images_per_s, 1) for r in runs]
    return median


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the tools: no proxies (loopback only), no telemetry."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
                "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def _failure_note(m: Measurement) -> str:
    if m.ok:
        return ""
    return f"exit {m.returncode}{' (timed out)' if m.timed_out else ''}; see {m.log_path}"


# ---------------------------------------------------------------- img2dataset


def ensure_img2dataset(venv_dir: Path, spec: str = IMG2DATASET_SPEC,
                       timeout_s: float = 900) -> Path:
    """The ``img2dataset`` executable of its own venv, created and installed if missing."""
    exe = venv_dir / "bin" / "img2dataset"
    python = venv_dir / "bin" / "python"
    if exe.exists() and img2dataset_version(venv_dir):
        return exe
    logger.info("creating %s and installing %s (one time, ~30 s)", venv_dir, spec)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    cmd = [str(python), "-m", "pip", "install", "-q", *IMG2DATASET_EXTRA, spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"), check=False)
    if proc.returncode != 0 or not exe.exists():
        raise RuntimeError(f"installing img2dataset failed ({' '.join(cmd)}):\n"
                           f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return exe


def img2dataset_version(venv_dir: Path) -> str:
    """'img2dataset X (opencv Y, albumentations Z)', or '' if it does not import."""
    code = ("import importlib.metadata as m, img2dataset, cv2;"
            "print(m.version('img2dataset'), cv2.__version__, m.version('albumentations'))")
    try:
        proc = subprocess.run([str(venv_dir / "bin" / "python"), "-c", code], capture_output=True,
                              text=True, timeout=120, env=_clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if proc.returncode != 0:
        return ""
    i2d, cv, alb = proc.stdout.split()
    return f"{i2d} (opencv {cv}, albumentations {alb})"


def run_img2dataset(exe: Path, urls: Path, out_dir: Path, *, image_size: int, resize_mode: str,
                    threads: int, processes: int, shard_size: int, timeout_s: float,
                    nginx_pids: Any = None, label: str = "") -> ToolRun:
    """Run img2dataset on ``urls`` (parquet: uid, url, caption) into ``out_dir`` (parquet)."""
    shutil.rmtree(out_dir, ignore_errors=True)  # it resumes from finished shards otherwise
    cmd = [
        str(exe), "--url_list", str(urls), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--save_additional_columns", '["uid"]',
        "--output_format", "parquet", "--output_folder", str(out_dir),
        "--image_size", str(image_size), "--resize_mode", RESIZE_MODES[resize_mode],
        "--processes_count", str(processes), "--thread_count", str(threads),
        "--number_sample_per_shard", str(shard_size), "--timeout", "10", "--retries", "0",
        "--encode_quality", "95", "--enable_wandb", "False",
        "--disallowed_header_directives", "[]",
    ]
    m = run_measured(cmd, timeout_s=timeout_s, log_path=out_dir.parent / f"{out_dir.name}.log",
                     env=_clean_env(), others={"nginx": nginx_pids} if nginx_pids else None)
    total, successes = 0, 0
    for stats in sorted(out_dir.glob("*_stats.json")):
        data = json.loads(stats.read_text())
        total += int(data.get("count", 0))
        successes += int(data.get("successes", 0))
    note = _failure_note(m)
    return ToolRun("img2dataset", label or f"img2dataset ({processes}×{threads} threads)", True,
                   total, successes, m, str(out_dir), cmd,
                   {"threads": threads, "processes": processes, "shard_size": shard_size}, note)


# ---------------------------------------------------------------- clip-index


def clip_index_command(python: str, urls: Path, out_dir: Path, image_size: int,
                       resize_mode: str) -> list[str]:
    """The clip-index download command line measured by the benchmark."""
    return [python, "-m", "clip_index.cli", "download", "--input", str(urls),
            "--output-dir", str(out_dir), "--image-size", str(image_size),
            "--resize-mode", resize_mode, "--allow-private-networks"]


def clip_index_available(python: str, cwd: Path) -> tuple[bool, str]:
    """(available, version or reason): does ``python -m clip_index.cli download --help`` work?"""
    try:
        proc = subprocess.run([python, "-m", "clip_index.cli", "download", "--help"], cwd=cwd,
                              capture_output=True, text=True, timeout=120, env=_clean_env(),
                              preexec_fn=die_with_parent)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"not available ({err})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"not available (`clip_index.cli download --help`: {last})"
    code = ("import importlib.metadata as m\n"
            "try: print(m.version('clip-index'))\n"
            "except Exception: import clip_index; print(getattr(clip_index, '__version__', '?'))")
    ver = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True,
                         timeout=60, env=_clean_env()).stdout.strip()
    if ver in ("", "?"):  # not pip-installed: the checkout's pyproject.toml
        try:
            with open(cwd / "pyproject.toml", "rb") as f:
                ver = f"{tomllib.load(f)['project']['version']} (checkout)"
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            ver = "?"
    return True, ver


def count_clip_index_output(out_dir: Path) -> tuple[int, int]:
    """(rows, successes) over every parquet file under ``out_dir``."""
    total = successes = 0
    for path in sorted(out_dir.rglob("*.parquet")):
        schema = pq.read_schema(path)
        if "status" in schema.names:
            status = pq.read_table(path, columns=["status"]).column("status")
            total += len(status)
            successes += int(pc.sum(pc.equal(status, "success")).as_py() or 0)
        elif "image" in schema.names:
            image = pq.read_table(path, columns=["image"]).column("image")
            total += len(image)
            successes += len(image) - image.null_count
    return total, successes


def run_clip_index(python: str, cwd: Path, urls: Path, out_dir: Path, *, image_size: int,
                   resize_mode: str, timeout_s: float, nginx_pids: Any = None) -> ToolRun:
    """Run clip-index's downloader CLI on ``urls`` into ``out_dir``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = clip_index_command(python, urls, out_dir, image_size, resize_mode)
    m = run_measured(cmd, timeout_s=timeout_s, log_path=out_dir.parent / f"{out_dir.name}.log",
                     env=_clean_env(), cwd=cwd,
                     others={"nginx": nginx_pids} if nginx_pids else None)
    total, successes = count_clip_index_output(out_dir) if out_dir.exists() else (0, 0)
    note = _failure_note(m)
    return ToolRun("clip-index", "clip-index", True, total, successes, m, str(out_dir), cmd, {},
                   note)


def unavailable(tool: str, reason: str) -> ToolRun:
    """A placeholder row for a tool that could not run."""
    return ToolRun(tool, tool, False, note=reason)


def project_python() -> str:
    """The interpreter running the benchmark (the project venv's)."""
    return sys.executable
