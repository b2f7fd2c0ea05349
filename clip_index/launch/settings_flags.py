"""The compile-time settings' flags (`PipelineSettings`: images, the embed step's GPU, fan-out,
per-task CPU and memory, retries), shared by `clip-index run`, `compile` and `submit`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from clip_index.flags import flag

if TYPE_CHECKING:  # importing the pipelines imports kfp: not at the start of every command
    from clip_index.pipelines import PipelineSettings


def add_settings_flags(parser: argparse.ArgumentParser,
                       defaults: PipelineSettings | None = None) -> None:
    """Compile-time settings: images, the embed step's GPU, the fan-out limit, per-task CPU and
    memory, retries (the defaults are `defaults`', else `PipelineSettings`'s)."""
    from clip_index.pipelines import PipelineSettings

    d = defaults or PipelineSettings()
    parser.add_argument("--image-tag", default="dev",
                        help="tag of the clip-index-cpu/-gpu images (never 'latest')")
    parser.add_argument("--image-repo", default=None,
                        help="registry path of the images, e.g. us-docker.pkg.dev/P/clip-index")
    parser.add_argument("--gpu-type", default=d.gpu_type,
                        help=f"accelerator of the embed step (default: {d.gpu_type})")
    parser.add_argument("--gpu-count", type=int, default=d.gpu_count,
                        help=f"GPUs per embed task, 0 = none (default: {d.gpu_count})")
    parser.add_argument("--download-parallelism", type=int, default=d.download_parallelism,
                        help="download tasks, each streaming its share of the shards, 1-100, "
                             "run as embed-parallelism groups of equal size (rounded up); x "
                             f"download-cpu = vCPUs in use (default: {d.download_parallelism})")
    parser.add_argument("--embed-parallelism", type=int, default=d.embed_parallelism,
                        help="embed groups, each one embed task fed by its own download tasks, "
                             "1-100; x gpu-count = GPUs in use, the GPU-quota knob "
                             f"(default: {d.embed_parallelism})")
    for step in ("download", "embed", "write", "index"):
        for kind in ("cpu", "memory"):
            name = f"{step}_{kind}"
            parser.add_argument(flag(name), dest=name, default=getattr(d, name),
                                help=f"{kind} limit of each {step} task "
                                     f"(default: {getattr(d, name)})")
    parser.add_argument("--task-retries", type=int, default=d.task_retries,
                        help=f"retries of a failed download/embed task (default: {d.task_retries})")
    parser.add_argument("--backoff-s", type=int, default=d.backoff_s,
                        help=f"seconds before the first retry, doubling (default: {d.backoff_s})")


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    from clip_index.pipelines import DEFAULT_IMAGE_REPO, PipelineSettings

    repo = (args.image_repo or DEFAULT_IMAGE_REPO).rstrip("/")
    sized = {f"{step}_{kind}": getattr(args, f"{step}_{kind}")
             for step in ("download", "embed", "write", "index") for kind in ("cpu", "memory")}
    return PipelineSettings(
        cpu_image=f"{repo}/clip-index-cpu:{args.image_tag}",
        gpu_image=f"{repo}/clip-index-gpu:{args.image_tag}",
        gpu_type=args.gpu_type, gpu_count=args.gpu_count,
        download_parallelism=args.download_parallelism,
        embed_parallelism=args.embed_parallelism,
        task_retries=args.task_retries, backoff_s=args.backoff_s, **sized,
    )
