"""`clip-index <run|load|download|embed|write|index|query|compile|demo>`: the command line.

`run` executes the same @dsl.pipeline that is compiled for Vertex AI, locally, through
kfp.local's SubprocessRunner; every pipeline parameter is a flag of the same name.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("clip_index")


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: expected true or false")


def _add_pipeline_flags(parser: argparse.ArgumentParser, func: Any) -> None:
    """One flag per pipeline parameter, same name, type and default (bools are switches)."""
    for name, param in inspect.signature(func).parameters.items():
        kind = param.annotation
        required = param.default is inspect.Parameter.empty
        if kind is bool:
            parser.add_argument(_flag(name), dest=name, action="store_true",
                                default=False if required else param.default)
            continue
        parser.add_argument(_flag(name), dest=name, type=kind, required=required,
                            default=None if required else param.default,
                            help=None if required else f"default: {param.default!r}")


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-tag", default="dev",
                        help="tag of the clip-index-cpu/-gpu images (never 'latest')")
    parser.add_argument("--image-repo", default=None,
                        help="registry path of the images (default: the pipelines' placeholder)")
    parser.add_argument("--gpu-type", default="NVIDIA_L4", help="accelerator of the embed step")
    parser.add_argument("--gpu-count", type=int, default=1, help="GPUs per embed task (0 = none)")
    parser.add_argument("--parallelism", type=int, default=8,
                        help="shards downloaded/embedded at once (the GPU-quota knob)")


def settings_from_args(args: argparse.Namespace) -> Any:
    from clip_index.pipelines import DEFAULT_IMAGE_REPO, PipelineSettings

    repo = (args.image_repo or DEFAULT_IMAGE_REPO).rstrip("/")
    return PipelineSettings(
        cpu_image=f"{repo}/clip-index-cpu:{args.image_tag}",
        gpu_image=f"{repo}/clip-index-gpu:{args.image_tag}",
        gpu_type=args.gpu_type, gpu_count=args.gpu_count, parallelism=args.parallelism,
    )


def cmd_run(args: argparse.Namespace, pipeline_func: Any) -> int:
    from clip_index.runner import run_local

    params = {name: getattr(args, name)
              for name in inspect.signature(pipeline_func).parameters}
    summary = run_local(params, pipeline_root=args.pipeline_root,
                        settings=settings_from_args(args))
    print(summary)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from clip_index.search import ClipIndex

    if not (args.text or args.image or args.embedding):
        raise SystemExit("query: give --text, --image or --embedding")
    index = ClipIndex(args.output_dir, mmap=args.mmap)
    if args.text:
        results = index.search_text(args.text, args.k)
        title = f"text {args.text!r}"
    elif args.image:
        results = index.search_image(args.image, args.k)
        title = f"image {args.image}"
    else:
        import numpy as np

        vector = np.asarray(json.loads(Path(args.embedding).read_text()), dtype=np.float32)
        results = index.search_embedding(vector, args.k)[0]
        title = f"embedding {args.embedding}"
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0
    print(f"top {len(results)} for {title} in {args.output_dir} "
          f"({index.manifest['model']}, {index.manifest['pretrained']}):")
    for rank, r in enumerate(results, 1):
        print(f"{rank:3d}. {r.score:.4f}  {r.uid}  {r.caption or ''}  {r.url}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from clip_index.compiler import compile_all

    for path in compile_all(args.output_dir, settings_from_args(args)):
        print(path)
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    """The single-step commands, for debugging a shard or running a step by hand."""
    from clip_index import config as cfg

    step = args.command
    if step == "load":
        from clip_index.dataset import run_load

        result: Any = run_load(cfg.LoadConfig(
            dataset=args.dataset, id_column=args.id_column, url_column=args.url_column,
            caption_column=args.caption_column, limit=args.limit, shard_size=args.shard_size,
        ), args.output)
    elif step == "download":
        from clip_index.download import download_shard, run_download

        dl = cfg.DownloadConfig(image_size=args.image_size, resize_mode=args.resize_mode,
                                timeout_s=args.timeout_s, retries=args.retries,
                                concurrency=args.concurrency,
                                allow_private_networks=args.allow_private_networks)
        if args.input:
            stats = download_shard(args.input, os.path.join(args.output, "part-00000.parquet"), dl)
            print(json.dumps(stats.as_dict(), indent=2))
            return 0
        result = run_download(args.urls, args.shard, args.output, dl)
    elif step == "embed":
        from clip_index.embed import run_embed

        result = run_embed(args.images, args.shard, args.output, cfg.EmbedConfig(
            model=args.model, pretrained=args.pretrained, batch_size=args.batch_size,
            dtype=args.dtype))
    elif step == "write":
        from clip_index.write import run_write

        result = run_write(args.embeddings, args.output_dir)
    else:
        from clip_index.index import run_index

        result = run_index(args.output_dir, cfg.IndexConfig(index_key=args.index_key))
        print(json.dumps(result.infos, indent=2, default=str))
        return 0
    print(json.dumps(result.as_metadata(), indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from clip_index.demo import run_demo

    run_demo(Path(args.work_dir), shards=args.shards)
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    from clip_index.pipelines import make_index_pipeline

    pipeline_func = make_index_pipeline().pipeline_func
    parser = argparse.ArgumentParser(prog="clip-index", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally (kfp.local)")
    _add_pipeline_flags(run, pipeline_func)
    run.add_argument("--pipeline-root", default=None,
                     help="where kfp.local keeps task artifacts (default: OUTPUT_DIR/.pipeline)")
    _settings_flags(run)

    query = sub.add_parser("query", help="search a published output folder")
    query.add_argument("output_dir")
    query.add_argument("--text")
    query.add_argument("--image", help="path of an image file")
    query.add_argument("--embedding", help="JSON file holding one embedding (a list of floats)")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--json", action="store_true", help="print a JSON list, best first")
    query.add_argument("--mmap", action="store_true", help="memory-map the index")

    comp = sub.add_parser("compile", help="compile every pipeline to YAML")
    comp.add_argument("--output-dir", default="compiled")
    _settings_flags(comp)

    demo = sub.add_parser("demo", help="the bundled sample, end to end, with the tiny CLIP")
    demo.add_argument("--work-dir", default=".demo")
    demo.add_argument("--shards", type=int, default=2)

    load = sub.add_parser("load", help="step: dataset → URL shards")
    load.add_argument("--dataset", required=True)
    load.add_argument("--output", required=True)
    for name, default in (("id_column", "uid"), ("url_column", "url"),
                          ("caption_column", "text")):
        load.add_argument(_flag(name), dest=name, default=default)
    load.add_argument("--limit", type=int, default=0)
    load.add_argument("--shard-size", type=int, default=10000)

    download = sub.add_parser("download", help="step: one URL shard → image shard")
    download.add_argument("--urls", help="the load step's folder (with --shard)")
    download.add_argument("--shard", type=int, default=0)
    download.add_argument("--input", help="or: one URL parquet file (uid, url, caption)")
    download.add_argument("--output", required=True)
    download.add_argument("--image-size", type=int, default=256)
    download.add_argument("--resize-mode", default="keep_ratio")
    download.add_argument("--timeout-s", type=float, default=20.0)
    download.add_argument("--retries", type=int, default=2)
    download.add_argument("--concurrency", type=int, default=128)
    download.add_argument("--allow-private-networks", action="store_true")

    embed = sub.add_parser("embed", help="step: one image shard → embedding shard")
    embed.add_argument("--images", required=True)
    embed.add_argument("--shard", type=int, default=0)
    embed.add_argument("--output", required=True)
    embed.add_argument("--model", default="ViT-B-32")
    embed.add_argument("--pretrained", default="laion2b_s34b_b79k")
    embed.add_argument("--batch-size", type=int, default=0)
    embed.add_argument("--dtype", default="float32")

    write = sub.add_parser("write", help="step: embedding shards → OUTPUT_DIR/data")
    write.add_argument("--embeddings", nargs="+", required=True)
    write.add_argument("--output-dir", required=True)

    index = sub.add_parser("index", help="step: OUTPUT_DIR/data → faiss index")
    index.add_argument("--output-dir", required=True)
    index.add_argument("--index-key", default="")
    return parser, pipeline_func


def main(argv: list[str] | None = None) -> int:
    parser, pipeline_func = build_parser()
    args = parser.parse_args(argv)
    # a query prints results, not progress: only warnings unless -v
    configure_logging(args.verbose, quiet=args.command == "query")
    start = time.monotonic()
    try:
        if args.command == "run":
            code = cmd_run(args, pipeline_func)
        elif args.command == "query":
            code = cmd_query(args)
        elif args.command == "compile":
            code = cmd_compile(args)
        elif args.command == "demo":
            code = cmd_demo(args)
        else:
            code = cmd_step(args)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        print(f"clip-index {args.command}: error: {exc}", file=sys.stderr)
        return 2
    log.debug("%s took %.1fs", args.command, time.monotonic() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
