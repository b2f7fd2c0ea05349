"""`clip-index retrieve QUERIES INDEX_DIR --output DIR`: the retrieve step from the command line
(the same library calls as the retrieve pipeline's components, without kfp)."""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clip_index.config import RetrieveConfig
    from clip_index.flags import add_config_flags

    parser.add_argument("queries", help="txt / csv / jsonl / parquet prompts, or npy embeddings")
    parser.add_argument("index_dir", help="a published clip-index folder")
    parser.add_argument("--output", required=True,
                        help="folder for queries/, matches/matches.parquet and urls/ (shards)")
    add_config_flags(parser, RetrieveConfig)


def command(args: argparse.Namespace) -> int:
    from clip_index.config import RetrieveConfig
    from clip_index.flags import config_from_args
    from clip_index.search.retrieve import run_load_queries, run_retrieve

    config = config_from_args(RetrieveConfig, args)
    queries, matches, urls = (os.path.join(args.output, d) for d in ("queries", "matches", "urls"))
    run_load_queries(args.queries, queries, config)
    result = run_retrieve(queries, args.index_dir, matches, urls, config)
    summary = {**result.as_metadata(), "urls": urls,
               "matches_file": os.path.join(matches, "matches.parquet")}
    print(json.dumps(summary, indent=2))
    return 0
