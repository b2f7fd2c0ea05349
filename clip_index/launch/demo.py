"""`make demo`: generate the bundled synthetic sample, serve it from 127.0.0.1, run the whole
pipeline locally with the bundled tiny CLIP, and print the top results of a few queries."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq

log = logging.getLogger(__name__)

DEMO_QUERIES = ("a red circle", "a blue square", "a green triangle", "a yellow star")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug(format, *args)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) for the duration; yields the base URL.

    Python's http.server is plenty for a few hundred images (not for benchmarks: bench/ uses
    nginx)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_demo(work_dir: Path, n_images: int = 480, shards: int = 2, verbose: bool = False,
             results_per_query: int = 3) -> str:
    """The demo end to end; returns (and prints) the summary and the query results."""
    from clip_index.launch.runner import run_local
    from clip_index.launch.sample import make_sample, sample_urls
    from clip_index.search.searcher import ClipIndex

    work_dir = work_dir.resolve()
    table = make_sample(work_dir / "sample", n_images=n_images)
    output_dir = work_dir / "output"
    with serve_folder(work_dir / "sample") as base_url:
        urls_path = work_dir / "urls.parquet"
        pq.write_table(sample_urls(table, base_url), urls_path)
        summary = run_local({
            "dataset": str(urls_path), "output_dir": str(output_dir),
            "shard_size": math.ceil(n_images / shards), "model": "tiny-clip",
            "pretrained": "bundled", "image_size": 128, "allow_private_networks": True,
        }, verbose=verbose)
    index = ClipIndex(output_dir)
    lines = [summary,
             "Model: tiny-clip with the bundled weights, a 'CLIP' trained in seconds on "
             "synthetic shapes",
             "(scripts/train_tiny_clip.py); for real images use --model ViT-B-32 --pretrained "
             "laion2b_s34b_b79k."]
    for query in DEMO_QUERIES:
        lines.append(f"query {query!r}:")
        for r in index.search_text(query, results_per_query):
            lines.append(f"   {r.score:.3f}  {r.caption}  ({r.uid})")
    text = "\n".join(lines)
    print(text)
    return text

