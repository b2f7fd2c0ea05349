"""A real output folder from the pipeline's step functions (load → download → embed → write →
index → report) on a small image sample served from 127.0.0.1, with the tiny CLIP and random
weights; a few URLs fail on purpose (404, 403, opted out) so failures have reasons."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.http_server import TestServer
from tests.support.images import shape_jpeg

COLOURS = {"red": (215, 25, 30), "green": (25, 150, 45), "blue": (30, 70, 215),
           "yellow": (245, 205, 10)}
SHAPES = ("circle", "square", "triangle")


def build_sample_output(work: Path, server: TestServer, thumbnails: bool = True) -> Path:
    """Serve the sample from `server`, run every step, return the output folder (with the
    download step's thumbnails in thumbnails/, unless not wanted)."""
    from clip_index.config import DownloadConfig, EmbedConfig, IndexConfig, LoadConfig
    from clip_index.download.step import run_download
    from clip_index.embed.step import run_embed
    from clip_index.index.build import run_index
    from clip_index.index.write import run_write
    from clip_index.load.step import plan_shards, run_load
    from clip_index.publish.report import run_report

    rows = []
    for shape in SHAPES:
        for name, rgb in COLOURS.items():
            for copy in range(2):
                path = f"/img/{shape}-{name}-{copy}.jpg"
                rows.append({"uid": f"{shape}-{name}-{copy}", "text": f"a {name} {shape}",
                             "url": server.add_bytes(path, shape_jpeg(shape, rgb, 96 + copy))})
    rows.append({"uid": "missing", "text": "a lost image",
                 "url": server.add_bytes("/gone.jpg", b"gone", "text/plain", status=404)})
    rows.append({"uid": "forbidden", "text": "a locked picture",
                 "url": server.add_bytes("/locked.jpg", b"no", "text/plain", status=403)})
    rows.append({"uid": "opted-out", "text": "a private picture",
                 "url": server.add_bytes("/noai.jpg", shape_jpeg("circle", (0, 0, 0)),
                                         headers={"X-Robots-Tag": "noai"})})
    dataset = work / "sample.parquet"
    pq.write_table(pa.Table.from_pylist(rows), dataset)
    urls, images, embeddings = (str(work / name) for name in ("urls", "images", "embeddings"))
    output = str(work / "output")
    run_load(LoadConfig(dataset=str(dataset), shard_size=14), urls)
    download = DownloadConfig(allow_private_networks=True, image_size=64, download_retries=0,
                              timeout_s=10, thumbnail_px=128 if thumbnails else 0)
    embed = EmbedConfig(model="tiny-clip", pretrained="none", device="cpu", num_workers=0)
    shards = plan_shards(urls)
    run_download(urls, shards, images, download)
    run_embed([images], shards, embeddings, embed)
    run_write([embeddings], output)
    run_index(output, IndexConfig(index_key="Flat", recall_queries=10))
    run_report(output)
    return Path(output)
