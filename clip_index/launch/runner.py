"""Local runs: check every parameter before any work, run the pipeline through kfp.local's
SubprocessRunner (the same @dsl.pipeline compiled for Vertex), then summarise the output."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from clip_index import io, schema
from clip_index.config import DownloadConfig, EmbedConfig, IndexConfig, LoadConfig

log = logging.getLogger(__name__)

def configs_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """The step configs a set of pipeline parameters makes (validated)."""
    configs = {}
    for cls in (LoadConfig, DownloadConfig, EmbedConfig, IndexConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in params.items() if k in names and v is not None}
        config = cls(**kwargs)
        config.validate()
        configs[cls.__name__] = config
    return configs


def preflight(params: dict[str, Any]) -> None:
    """Fail before any work on a bad value: configs, model name and weights, output folder,
    dataset location and columns."""
    from clip_index.embed.models import check_model_name, check_pretrained
    from clip_index.load.step import check_source

    if not params.get("output_dir"):
        raise ValueError("output_dir is required: the folder the index is published to")
    configs = configs_from_params(params)
    check_model_name(params["model"])
    check_pretrained(params["model"], params["pretrained"])
    io.check_writable(params["output_dir"])
    check_source(configs["LoadConfig"])
    if params.get("hub_repo_id"):  # the final publish step: a bad id fails now, not at the end
        from clip_index.config import PublishConfig

        PublishConfig(hub_repo_id=params["hub_repo_id"],
                      hub_revision=params.get("hub_revision") or "").validate()


def run_local(params: dict[str, Any], pipeline_root: str | None = None,
              settings: Any = None, cache: bool = True, verbose: bool = False) -> str:
    """Run the clip-index pipeline on this machine; return a summary of what it produced.
    Parameters not given take the pipeline's defaults.

    With `cache` (the default), a run repeated with the same parameters and pipeline root
    reuses every task that finished before (kfp.local's cache, as Vertex AI's): a run killed
    midway resumes from its finished work units instead of starting over. Unless `verbose`,
    the terminal shows one line per task start and end and the download/embed progress, and
    kfp.local's full output goes to ``task.log`` in each task's folder under the pipeline
    root (see `clip_index.launch.console`)."""
    from kfp import local

    from clip_index.pipelines import make_index_pipeline

    params = {**pipeline_defaults(), **params}
    params["output_dir"] = os.path.abspath(params["output_dir"]) if "://" not in str(
        params.get("output_dir")) else params["output_dir"]
    preflight(params)
    from clip_index.launch.fingerprint import with_fingerprint

    params = with_fingerprint(params)  # the load step's cache key follows the content
    root = pipeline_root or os.path.join(params["output_dir"], ".pipeline")
    os.makedirs(root, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=True, enable_caching=cache)
    # expected locally, and said once here instead of per task: resources, accelerators and
    # display names only apply on Vertex/Kubeflow, and tasks run in this Python, not the images
    log.info("kfp.local: tasks run in this Python environment; GPU/CPU/memory settings and "
             "display names apply on Vertex AI and Kubeflow only")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
    warnings.filterwarnings("ignore", message=".*non-Python base image")
    pipeline = make_index_pipeline(local_settings(settings or default_local_settings()))
    start = time.monotonic()
    # kfp.local swaps builtins.print for an indenting one, and the root logger's handlers and
    # level for its own, around each task, from each task's thread: with two tasks at once the
    # swaps interleave and kfp's print and handler can stay after the run. Put both back.
    root_logger = logging.getLogger()
    saved = (builtins.print, root_logger.handlers[:], root_logger.level)

    def restore() -> None:
        builtins.print = saved[0]
        root_logger.handlers[:] = saved[1]
        root_logger.setLevel(saved[2])

    if verbose:
        try:
            pipeline(**params)
        finally:
            restore()
    else:
        from clip_index.launch.console import LOG_NAME, TaskConsole

        terminal = sys.stdout
        terminal.write(f"kfp.local: each task's full output goes to its folder's {LOG_NAME} "
                       f"under {root} (-v shows it here)\n")
        console = TaskConsole(terminal, os.path.join(root, "kfp-local.log"))
        # kfp.local's per-task logger swaps race between the two threads of a loop, and a
        # swap can put back the level and handlers of before the run: make those INFO and
        # the console too, so no task's "finished" line is lost whichever swap wins
        root_logger.handlers[:] = [logging.StreamHandler(console)]
        root_logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(console):
                pipeline(**params)
            if console.failed:  # a task in a loop fails without raising in kfp.local
                raise RuntimeError(f"{len(console.failed)} task(s) failed; their logs: "
                                   + ", ".join(console.failed))
        except RuntimeError:
            console.unfinished()
            raise
        finally:
            restore()
            console.close()
    return summary(params["output_dir"], time.monotonic() - start, root)


# kfp.local runs at most two tasks at once: wider loops only add task start-ups on one machine
LOCAL_WIDTHS = {"download_parallelism": 2, "embed_parallelism": 1}


def default_local_settings() -> Any:
    """The settings a local run compiles with unless told otherwise: the loops only as wide as
    kfp.local runs tasks at once, no accelerator."""
    from clip_index.pipelines import PipelineSettings

    return PipelineSettings(gpu_count=0, **LOCAL_WIDTHS)


def local_settings(settings: Any) -> Any:
    """The settings a local run compiles with: no accelerator is requested locally, so the embed
    task must not require CUDA (a pipeline compiled with a GPU passes device="cuda"); with
    gpu_count 0 it runs on device "auto", which still takes this machine's GPU when usable."""
    return dataclasses.replace(settings, gpu_count=0)


def pipeline_defaults() -> dict[str, Any]:
    """Every pipeline parameter that has a default, with it."""
    import inspect

    from clip_index.pipelines import make_index_pipeline

    params = inspect.signature(make_index_pipeline().pipeline_func).parameters
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def step_times(pipeline_root: str) -> dict[str, float]:
    """Wall seconds per step of the latest local run, from the `seconds` its artifacts record."""
    runs = sorted(Path(pipeline_root).glob("clip-index-*"), key=os.path.getmtime)
    if not runs:
        return {}
    times: dict[str, float] = {}
    for output in runs[-1].rglob("executor_output.json"):
        step = output.parent.name
        data = json.loads(output.read_text())
        for artifacts in data.get("artifacts", {}).values():
            for artifact in artifacts.get("artifacts", []):
                seconds = artifact.get("metadata", {}).get("seconds")
                if seconds is not None:
                    times[step] = times.get(step, 0.0) + float(seconds)
    return times


def summary(output_dir: str, wall_s: float, pipeline_root: str | None = None) -> str:
    """A few lines a person reads at the end of a run."""
    manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
    infos = io.read_json(io.join(output_dir, schema.INDEX_INFOS))
    totals = manifest["totals"]
    failures = ", ".join(f"{k} {v}" for k, v in totals["statuses"].items() if k != "success")
    lines = [
        f"clip-index run finished in {wall_s:.1f}s → {output_dir}",
        f"  rows: {totals['rows']}   embedded: {totals['successes']} "
        f"({totals['success_rate']:.1%})   failures: {failures or 'none'}",
        f"  model: {manifest['model']} ({manifest['pretrained']}), dim {manifest['dim']}, "
        f"{manifest['dtype']}",
        f"  index: {infos['index_key']}, {infos['vectors']} vectors, "
        f"{infos['size_bytes'] / 1e6:.2f} MB, recall@10 {infos.get('recall_at_10', 'n/a')}, "
        f"p50 {infos.get('latency_p50_ms', 'n/a')} ms",
    ]
    if totals.get("errors"):
        top = ", ".join(f"{k} {v}" for k, v in list(totals["errors"].items())[:5])
        lines.append(f"  top errors: {top}")
    if pipeline_root:
        times = step_times(pipeline_root)
        if times:
            lines.append("  step seconds (summed over tasks): " +
                         ", ".join(f"{k} {v:.1f}" for k, v in sorted(times.items())))
    runs = sorted(Path(pipeline_root).glob("clip-index-*"), key=os.path.getmtime) \
        if pipeline_root else []
    if runs:
        lines.append(f"  task logs: {runs[-1]}/<task>/task.log")
    lines.append(f"  query it: clip-index query {output_dir} --text 'a red circle'")
    return "\n".join(lines)
