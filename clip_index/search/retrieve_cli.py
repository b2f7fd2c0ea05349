"""`clip-index retrieve QUERIES INDEX_DIR --output-dir DIR`: the retrieve step from the command line
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
    parser.add_argument("--output-dir", required=True,
                        help="folder for queries/, matches/matches.parquet and urls/ (shards)")
    add_config_flags(parser, RetrieveConfig)
    parser.add_argument("--download", action="store_true",
                        help="save each matched image into OUTPUT_DIR/images/: the thumbnail kept "
                        "in the index folder when there is one (no fetch; survives dead "
                        "links), else fetched from its URL")
    parser.add_argument("--allow-private-networks", action="store_true",
                        help="with --download: let fetches reach private/loopback addresses")


def command(args: argparse.Namespace) -> int:
    from clip_index.config import RetrieveConfig
    from clip_index.flags import config_from_args
    from clip_index.search.retrieve import run_load_queries, run_retrieve

    config = config_from_args(RetrieveConfig, args)
    queries, matches, urls = (os.path.join(args.output_dir, d)
                             for d in ("queries", "matches", "urls"))
    run_load_queries(args.queries, queries, config)
    result = run_retrieve(queries, args.index_dir, matches, urls, config)
    summary = {**result.as_metadata(), "urls": urls,
               "matches_file": os.path.join(matches, "matches.parquet")}
    if args.download:
        from clip_index.config import DownloadConfig
        from clip_index.search.retrieve import save_match_images

        images = os.path.join(args.output_dir, "images")
        fetch = DownloadConfig(download_retries=0, timeout_s=10.0,
                               allow_private_networks=args.allow_private_networks)
        summary["images"] = images
        summary["image_counts"] = save_match_images(matches, args.index_dir, images, fetch)
    print(json.dumps(summary, indent=2))
    return 0
