"""The embed benchmark's input: a download-step image shard of photo-like JPEGs with a
DataComp-like size mix, as the download step leaves them (256 px keep_ratio, JPEG q95).

Original sizes (long side): ~3% under 50 px, ~10% 50-299 px, ~72% 300-1,200 px, ~15%
1,200-4,000 px, with common photo aspect ratios. Originals are drawn at most at 2× the download
size (the resize output is what the embed step sees, and drawing 4,000 px images would only slow
the set-up), then go through `clip_index.download.resize.process_image` with the default
DownloadConfig.
The same images are also written as files (``files/NNNNN.jpg`` + ``.txt`` caption) for
clip-retrieval's ``--input_format files``. Cached: ``manifest.json`` is written last.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clip_index import io, schema
from clip_index.config import DownloadConfig
from clip_index.download.resize import process_image
from tests.support.images import encoded, photo_like

log = logging.getLogger(__name__)

VERSION = 1  # bump when the images change, so cached corpora are regenerated
SIZE_CLASSES = [(0.03, 16, 49), (0.10, 50, 299), (0.72, 300, 1200), (0.15, 1201, 4000)]
RATIOS = [1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 9 / 16]


def _original_size(rng: np.random.Generator) -> tuple[int, int]:
    shares = [c[0] for c in SIZE_CLASSES]
    _, low, high = SIZE_CLASSES[int(rng.choice(len(SIZE_CLASSES), p=shares))]
    long_side = int(rng.integers(low, high + 1))
    ratio = float(rng.choice(RATIOS))
    short_side = max(1, round(long_side / max(ratio, 1 / ratio)))
    return (long_side, short_side) if ratio >= 1 else (short_side, long_side)


def _make_row(args: tuple[int, int]) -> dict[str, Any]:
    index, seed = args
    rng = np.random.default_rng([seed, index])
    width, height = _original_size(rng)
    config = DownloadConfig()
    # draw at most 2x the download size: the resize output is what the embed step sees
    scale = min(1.0, 2 * config.image_size / min(width, height))
    drawn = photo_like(max(1, round(width * scale)), max(1, round(height * scale)),
                       seed=seed * 1_000_003 + index)
    processed = process_image(encoded(drawn, quality=90), config)
    return {
        schema.UID: f"img-{index:06d}", schema.URL: f"http://bench.invalid/{index:06d}.jpg",
        schema.CAPTION: f"a synthetic photo number {index}", schema.STATUS: "success",
        schema.ERROR: None, schema.IMAGE: processed.data, schema.WIDTH: processed.width,
        schema.HEIGHT: processed.height, schema.ORIGINAL_WIDTH: width,
        schema.ORIGINAL_HEIGHT: height, schema.SHA256: processed.sha256,
    }


def make_corpus(root: Path, n_images: int, seed: int = 0, rows_per_group: int = 256) -> Path:
    """The folder holding ``images/part-00000.parquet`` and ``files/``; made once, then reused."""
    folder = root / f"corpus-v{VERSION}-n{n_images}-s{seed}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    log.info("making %d photo-like images in %s (one time)", n_images, folder)
    with mp.get_context("spawn").Pool() as pool:
        rows = pool.map(_make_row, [(i, seed) for i in range(n_images)], chunksize=16)
    shard = str(folder / "images" / io.shard_name(0))
    with io.AtomicParquetWriter(shard, schema.IMAGES_SCHEMA) as writer:
        for start in range(0, len(rows), rows_per_group):  # row groups like the download step's
            writer.write(pa.Table.from_pylist(rows[start:start + rows_per_group],
                                              schema=schema.IMAGES_SCHEMA))
    files = folder / "files"
    files.mkdir(parents=True)
    for i, row in enumerate(rows):
        (files / f"{i:06d}.jpg").write_bytes(row[schema.IMAGE])
        (files / f"{i:06d}.txt").write_text(row[schema.CAPTION])
    sides = np.array([min(r[schema.WIDTH], r[schema.HEIGHT]) for r in rows])
    info = {"images": n_images, "seed": seed, "version": VERSION,
            "mean_jpeg_bytes": int(np.mean([len(r[schema.IMAGE]) for r in rows])),
            "share_shorter_side_256": float(np.mean(sides == 256)),
            "median_pixels": int(np.median([r[schema.WIDTH] * r[schema.HEIGHT] for r in rows]))}
    manifest.write_text(json.dumps(info, indent=2))
    return folder


def describe(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "manifest.json").read_text()))
