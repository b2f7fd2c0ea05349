"""`clip-index export INDEX_DIR --output-dir DIR --threshold T (--text ... | --image ... | --prompts
FILE)`: every match above a threshold, for many prompts in one exact pass (the same library
call as the export pipeline's component, without kfp)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clip_index.flags import add_typed_flags, component_docs, config_docs, config_params
    from clip_index.search.export_config import ExportConfig

    parser.add_argument("index_dir", help="a published clip-index folder (local, gs://, hf://)")
    parser.add_argument("--output-dir", required=True,
                        help="folder for matches.parquet, uids.npy (DataComp subset) and "
                             "summary.json")
    parser.add_argument("--text", action="append", default=[],
                        help="a text prompt (repeatable)")
    parser.add_argument("--image", action="append", default=[],
                        help="an image prompt: a local or fsspec path (repeatable)")
    parser.add_argument("--prompts", default="",
                        help="a file of prompts: .txt (one a line), .npy embeddings, or "
                             "csv/jsonl/parquet (--query-column / --embedding-column)")
    docs = {**config_docs(ExportConfig), **component_docs().get("export_matches", {})}
    add_typed_flags(parser, config_params(ExportConfig), docs)


def command(args: argparse.Namespace) -> int:
    from clip_index.flags import config_from_args
    from clip_index.search.export import Prompts, check_prompts, load_prompts, run_export
    from clip_index.search.export_config import ExportConfig

    config: ExportConfig = config_from_args(ExportConfig, args)
    config.validate()
    from_file = load_prompts(args.prompts, config) if args.prompts else Prompts()
    prompts = Prompts(texts=(*args.text, *from_file.texts),
                      images=(*args.image, *from_file.images),
                      embeddings=from_file.embeddings,
                      embedding_labels=from_file.embedding_labels)
    check_prompts(prompts)
    result = run_export(args.index_dir, args.output_dir, config, prompts)
    print(json.dumps({**result.as_metadata(), "output_dir": args.output_dir}, indent=2))
    return 0
