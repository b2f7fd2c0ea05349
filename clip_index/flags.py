"""Command-line flags generated from the one place each setting is defined: step configs'
dataclass fields, pipeline parameters and `PipelineSettings`."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from typing import Any


def flag(name: str) -> str:
    """``max_image_bytes`` → ``--max-image-bytes``."""
    return "--" + name.replace("_", "-")


def add_typed_flags(parser: argparse.ArgumentParser, params: dict[str, tuple[Any, Any]]) -> None:
    """One flag per (type, default) entry; a default of `inspect.Parameter.empty` is required;
    bools are switches (`--allow-private-networks`) with a `--no-` form."""
    for name, (kind, default) in params.items():
        required = default is inspect.Parameter.empty or default is dataclasses.MISSING
        if kind is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=False if required else default)
            continue
        parser.add_argument(flag(name), dest=name, type=kind, required=required,
                            default=None if required else default,
                            help=None if required else f"default: {default!r}")


def config_params(cls: type) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)}


def pipeline_params(func: Any) -> dict[str, tuple[Any, Any]]:
    return {n: (p.annotation, p.default) for n, p in inspect.signature(func).parameters.items()}


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Compile-time settings: images, the embed step's GPU, the fan-out limit, per-task CPU and
    memory, retries (the defaults are `PipelineSettings`'s)."""
    from clip_index.pipelines import PipelineSettings

    d = PipelineSettings()
    parser.add_argument("--image-tag", default="dev",
                        help="tag of the clip-index-cpu/-gpu images (never 'latest')")
    parser.add_argument("--image-repo", default=None,
                        help="registry path of the images, e.g. us-docker.pkg.dev/P/clip-index")
    parser.add_argument("--gpu-type", default=d.gpu_type,
                        help=f"accelerator of the embed step (default: {d.gpu_type})")
    parser.add_argument("--gpu-count", type=int, default=d.gpu_count,
                        help=f"GPUs per embed task, 0 = none (default: {d.gpu_count})")
    parser.add_argument("--download-parallelism", type=int, default=d.download_parallelism,
                        help="download tasks, each streaming its share of the shards: the "
                             "download loop's width, 1-100; x download-cpu = vCPUs in use "
                             f"(default: {d.download_parallelism})")
    parser.add_argument("--embed-parallelism", type=int, default=d.embed_parallelism,
                        help="embed tasks, each streaming its share of the shards: the embed "
                             "loop's width, 1-100; x gpu-count = GPUs in use, the GPU-quota "
                             f"knob (default: {d.embed_parallelism})")
    for step in ("download", "embed", "index"):
        for kind in ("cpu", "memory"):
            name = f"{step}_{kind}"
            parser.add_argument(flag(name), dest=name, default=getattr(d, name),
                                help=f"{kind} limit of each {step} task "
                                     f"(default: {getattr(d, name)})")
    parser.add_argument("--retries", type=int, default=d.retries,
                        help=f"retries of a failed download/embed task (default: {d.retries})")
    parser.add_argument("--backoff-s", type=int, default=d.backoff_s,
                        help=f"seconds before the first retry, doubling (default: {d.backoff_s})")


def settings_from_args(args: argparse.Namespace) -> Any:
    from clip_index.pipelines import DEFAULT_IMAGE_REPO, PipelineSettings

    repo = (args.image_repo or DEFAULT_IMAGE_REPO).rstrip("/")
    sized = {f"{step}_{kind}": getattr(args, f"{step}_{kind}")
             for step in ("download", "embed", "index") for kind in ("cpu", "memory")}
    return PipelineSettings(
        cpu_image=f"{repo}/clip-index-cpu:{args.image_tag}",
        gpu_image=f"{repo}/clip-index-gpu:{args.image_tag}",
        gpu_type=args.gpu_type, gpu_count=args.gpu_count,
        download_parallelism=args.download_parallelism,
        embed_parallelism=args.embed_parallelism,
        retries=args.retries, backoff_s=args.backoff_s, **sized,
    )
