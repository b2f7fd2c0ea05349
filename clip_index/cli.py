"""`clip-index <command>`: the command line.

`run` executes the same @dsl.pipeline that is compiled for Vertex AI, locally, through
kfp.local's SubprocessRunner; every pipeline parameter is a flag of the same name. The step
commands (`load`, `download`, `embed`, `write`, `index`) take one flag per field of the step's
config. Commands that live in other modules are listed in `EXTERNAL_COMMANDS`: each such module
has `add_arguments(parser)` and `command(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clip_index.flags import (
    add_config_flags,
    add_typed_flags,
    config_from_args,
    flag,
    pipeline_docs,
    pipeline_params,
    step_help,
)
from clip_index.launch.settings_flags import add_settings_flags, settings_from_args

log = logging.getLogger("clip_index")

# name → (module with add_arguments/command, help)
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "submit": ("clip_index.launch.submit", "submit the pipeline to Vertex AI Pipelines"),
    "doctor": ("clip_index.launch.doctor", "check a Vertex AI project before a submit: "
               "credentials, APIs, bucket, images, GPU quota, roles (what submit runs first)"),
    "plan": ("clip_index.launch.plan", "estimate wall time, GPU hours and cost of a run"),
    "publish": ("clip_index.publish.step", "upload an output folder to the Hugging Face Hub"),
    "serve": ("clip_index.search.server", "HTTP API (clip-retrieval's protocol) and search page"),
    "retrieve": ("clip_index.search.retrieve_cli",
                 "top matches of a file of prompts or embeddings"),
    "export": ("clip_index.search.export_cli",
               "every match above a similarity threshold: parquet + DataComp uid subset"),
}


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


SHARDS_HELP = "shard numbers, e.g. 0-39 or 3,7,9-12"


def shard_list(spec: str) -> list[int]:
    """``0-3,7`` → ``[0, 1, 2, 3, 7]``: the shards of a work unit, as the pipeline gives them."""
    shards: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if not match:
            raise argparse.ArgumentTypeError(
                f"{spec!r}: expected shard numbers like 0-39 or 3,7,9-12")
        first = int(match.group(1))
        shards.extend(range(first, int(match.group(2) or first) + 1))
    return shards


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    from clip_index.launch.runner import run_local
    from clip_index.pipelines import make_index_pipeline

    names = inspect.signature(make_index_pipeline().pipeline_func).parameters
    params = {name: getattr(args, name) for name in names}
    settings = settings_from_args(args)
    settings.validate()  # loop widths and sizes first: cheaper than checking the dataset
    print(run_local(params, pipeline_root=args.pipeline_root, settings=settings,
                    cache=not args.no_cache, verbose=args.verbose))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from clip_index.search.filters import filters_from_args
    from clip_index.search.searcher import ClipIndex

    given = [x for x in (args.text, args.image, args.image_url, args.embedding) if x]
    if len(given) != 1:
        raise ValueError("query: give exactly one of --text (repeatable), --image (repeatable), "
                         "--image-url or --embedding")
    filters = filters_from_args(args)  # a bad filter fails before the index is opened
    index = ClipIndex(args.output_dir, mmap=args.mmap, pretrained=args.pretrained)
    dedup = args.deduplicate
    if args.text:
        batches = index.search_text(args.text, args.k, dedup, filters)
        labels = args.text
    elif args.image:
        batches = index.search_image(list(args.image), args.k, dedup, filters)
        labels = args.image
    elif args.image_url:
        from clip_index.config import DownloadConfig
        from clip_index.schema import RowError

        fetch = DownloadConfig(allow_private_networks=args.allow_private_networks)
        try:
            batches = [index.search_image_url(args.image_url, args.k, dedup, fetch, filters)]
        except RowError as exc:  # blocked, too large, http_404, ...: say why, no traceback
            raise ValueError(f"--image-url {args.image_url}: {exc}") from exc
        labels = [args.image_url]
    else:
        import numpy as np

        vectors = np.asarray(json.loads(Path(args.embedding).read_text()), dtype=np.float32)
        batches = index.search_embedding(vectors, args.k, dedup, filters)
        labels = [f"embedding {i}" for i in range(len(batches))]
    if args.json:
        rows = [[r.as_dict() for r in results] for results in batches]
        _print_json(rows[0] if len(rows) == 1 else rows)
        return 0
    for label, results in zip(labels, batches):
        print(f"top {len(results)} for {label!r} in {args.output_dir} "
              f"({index.manifest['model']}, {index.manifest['pretrained']}):")
        for rank, r in enumerate(results, 1):
            print(f"{rank:3d}. {r.score:.4f}  {r.uid}  {r.caption or ''}  {r.url}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from clip_index.launch.compiler import compile_all

    for path in compile_all(args.output_dir, settings_from_args(args)):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from clip_index.launch.demo import run_demo

    run_demo(Path(args.work_dir), shards=args.shards, verbose=args.verbose)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from clip_index.config import LoadConfig
    from clip_index.load.step import run_load

    _print_json(run_load(config_from_args(LoadConfig, args), args.output_dir).as_metadata())
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from clip_index.config import DownloadConfig
    from clip_index.download.step import download_shard, run_download

    config = config_from_args(DownloadConfig, args)
    if args.input:  # one URL parquet file, e.g. for benchmarks
        config.validate()
        from clip_index.load.file import urls_file

        urls = urls_file(args.input, args.id_column, args.url_column, args.caption_column,
                         args.output_dir)
        stats = download_shard(urls, str(Path(args.output_dir) / "part-00000.parquet"), config)
        _print_json(stats.as_dict())
    elif args.urls:
        _print_json(run_download(args.urls, args.shards, args.output_dir, config).as_metadata())
    else:
        raise ValueError("download: give --urls DIR (with --shards) or --input FILE")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from clip_index.config import EmbedConfig
    from clip_index.embed.step import run_embed

    config = config_from_args(EmbedConfig, args)
    _print_json(run_embed(args.images, args.shards, args.output_dir, config).as_metadata())
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    from clip_index.index.write import run_write
    from clip_index.load.step import plan_shards

    expected = plan_shards(args.urls) if args.urls else None
    _print_json(run_write(args.embeddings, args.output_dir, expected).as_metadata())
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from clip_index.config import IndexConfig
    from clip_index.index.build import run_index

    _print_json(run_index(args.output_dir, config_from_args(IndexConfig, args)).infos)
    return 0


COMMANDS = ("run", "query", "compile", "demo", "load", "download", "embed", "write", "index",
            *EXTERNAL_COMMANDS)


def _add_run(run: argparse.ArgumentParser) -> None:
    """`run`: the pipeline's parameters, kfp.local's options and the compile settings."""
    from clip_index.launch.runner import default_local_settings
    from clip_index.pipelines import make_index_pipeline

    params = pipeline_params(make_index_pipeline().pipeline_func)
    add_typed_flags(run, params, pipeline_docs(params))
    run.add_argument("--pipeline-root", default=None, help="where kfp.local keeps task "
                     "artifacts (default: OUTPUT_DIR/.pipeline)")
    run.add_argument("--no-cache", action="store_true",
                     help="redo every task; by default a repeated run (same parameters and "
                          "pipeline root) reuses the tasks that finished, so a killed run "
                          "resumes")
    add_settings_flags(run, default_local_settings())


def _add_compile(comp: argparse.ArgumentParser) -> None:
    """`compile`: where the YAML goes, and the compile settings."""
    comp.add_argument("--output-dir", default="compiled", help="folder for the compiled "
                      "pipeline and component YAML files (default: compiled)")
    add_settings_flags(comp)


def _add_demo(demo: argparse.ArgumentParser) -> None:
    """`demo`: its work folder and shard count."""
    demo.add_argument("--work-dir", default=".demo", help="folder for the sample images, "
                      "the output index and the run's logs (default: .demo)")
    demo.add_argument("--shards", type=int, default=2,
                      help="URL shards the sample is cut into (default: 2)")


def _add_steps(command: Callable[[str, Any, str], argparse.ArgumentParser],
               wanted: Callable[[str], bool]) -> None:
    """The step commands (load, download, embed, write, index): each its input and output
    folders and its step config's flags."""
    from clip_index import config as cfg

    if wanted("load"):
        load = command("load", cmd_load, "step: dataset → URL shards")
        load.add_argument("--output-dir", required=True, help=step_help("load_dataset", "urls"))
        add_config_flags(load, cfg.LoadConfig)

    if wanted("download"):
        download = command("download", cmd_download, "step: URL shards → image shards")
        download.add_argument("--urls", help=step_help("download_images", "urls"))
        download.add_argument("--shards", type=shard_list, default=[0],
                              help="with --urls: " + SHARDS_HELP + " (default: 0)")
        download.add_argument("--input", help="or: one parquet file of URLs (see the "
                              "--*-column flags for its column names)")
        download.add_argument("--output-dir", required=True,
                              help=step_help("download_images", "images"))
        for name, default in (("id_column", "uid"), ("url_column", "url")):
            download.add_argument(flag(name), default=default, help=step_help(
                "load_dataset", name) + f" (with --input; default: {default})")
        download.add_argument("--caption-column", default=None, help=step_help(
            "load_dataset", "caption_column") + " (with --input; default: caption, else text, "
            "else none)")
        add_config_flags(download, cfg.DownloadConfig)

    if wanted("embed"):
        embed = command("embed", cmd_embed, "step: image shards → embedding shards")
        embed.add_argument("--images", nargs="+", required=True,
                           help=step_help("embed_images", "images"))
        embed.add_argument("--shards", type=shard_list, default=None,
                           help=SHARDS_HELP + " (default: those the download steps behind "
                           "--images were given, from their unit.json)")
        embed.add_argument("--output-dir", required=True,
                           help=step_help("embed_images", "embeddings"))
        add_config_flags(embed, cfg.EmbedConfig)

    if wanted("write"):
        write = command("write", cmd_write, "step: embedding shards → OUTPUT_DIR/data")
        write.add_argument("--embeddings", nargs="+", required=True,
                           help=step_help("write_embeddings", "embeddings"))
        write.add_argument("--output-dir", required=True,
                           help=step_help("write_embeddings", "output_dir"))
        write.add_argument("--urls", default=None,
                           help="the load step's folder: its manifest lists every shard that "
                                "must be written (default: the shards the embed steps' "
                                "unit.json name)")

    if wanted("index"):
        index = command("index", cmd_index, "step: OUTPUT_DIR/data → faiss index")
        index.add_argument("--output-dir", required=True,
                           help=step_help("build_index", "output_dir"))
        add_config_flags(index, cfg.IndexConfig)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with `only`, just that command's (the others' imports, kfp's above
    all, cost half a second at every start of a step)."""
    parser = argparse.ArgumentParser(
        prog="clip-index",
        description="Turn an image-URL dataset into a CLIP search index (a KFP pipeline that runs "
        "locally, on Vertex AI and on Kubeflow), then query, serve and publish it.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every log line (for run/demo: kfp.local's full task logs)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:  # noqa: A002
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("run"):
        _add_run(command("run", cmd_run, "run the whole pipeline locally (kfp.local)"))

    if wanted("query"):
        query = command("query", cmd_query, "search a published output folder")
        query.add_argument("output_dir", help="an output folder (local or gs://), hf://ORG/NAME"
                           "[@REVISION] on the Hugging Face Hub, or the reference's layout")
        query.add_argument("--text", action="append", help="a prompt (repeat for a batch)")
        query.add_argument("--image", action="append", help="an image file (repeat for a batch)")
        query.add_argument("--image-url", help="an image URL, fetched like the download step does")
        query.add_argument("--allow-private-networks", action="store_true",
                           help="let --image-url reach private/loopback addresses")
        query.add_argument("--embedding",
                           help="JSON file: one embedding (a list of floats) or a list of them")
        query.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
        query.add_argument("--deduplicate", action="store_true",
                           help="drop near-identical results (cosine >= 0.94)")
        query.add_argument("--json", action="store_true", help="print a JSON list, best first")
        query.add_argument("--mmap", action="store_true", help="memory-map the index")
        query.add_argument("--pretrained", default=None,
                           help="a local checkpoint of the index's model (when its tag can't be "
                           "downloaded)")
        from clip_index.search.filters import add_filter_arguments

        add_filter_arguments(query)

    if wanted("compile"):
        _add_compile(command("compile", cmd_compile, "compile every pipeline to YAML"))
    if wanted("demo"):
        _add_demo(command("demo", cmd_demo, "the bundled sample, end to end, with the tiny CLIP"))
    _add_steps(command, wanted)

    for name, (module, text) in EXTERNAL_COMMANDS.items():
        if not wanted(name):
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(command(name, mod.command, text))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    named = next((token for token in argv if not token.startswith("-")), None)
    args = build_parser(only=named if named in COMMANDS else None).parse_args(argv)
    # a query prints results, not progress; run and demo print their own short lines (-v: all)
    configure_logging(args.verbose, quiet=args.command in ("query", "run", "demo"))
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        log.debug("failed", exc_info=True)
        print(f"clip-index {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
