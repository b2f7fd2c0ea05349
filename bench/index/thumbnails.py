"""Thumbnail size and cost per million images: the download step's 128 px WebP, made from the
image it has just decoded and resized (its default 256 px keep_ratio, by the step's own
`decode` + `fit`), beside the cost of the same WebP from the stored JPEG (what the write step
did before the thumbnails moved into the download units) and a JPEG alternative, for the
DataComp-like synthetic corpus of bench/download/corpus.py.

    python -m bench.index.thumbnails --images 1000

Prints JSON: bytes per thumbnail (mean, median, p95), GB per million images, ms per image on
one core. The corpus is synthetic ("natural-ish" gradients, noise and shapes): real photos
carry more detail, so their thumbnails are larger; read the figure as a lower estimate.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from bench.download import corpus as corpus_mod
from clip_index.config import DownloadConfig
from clip_index.download.resize import decode, encode, fit, thumbnail
from clip_index.status import RowError


def webp_from_stored(image: bytes, size_px: int) -> bytes:
    """The WebP from the stored JPEG: a (draft) decode first, then the download step's own."""
    with Image.open(io.BytesIO(image)) as opened:
        opened.draft("RGB", (size_px, size_px))
        return thumbnail(opened.convert("RGB"), size_px)


def jpeg_thumbnail(image: bytes, size_px: int, quality: int = 75) -> bytes:
    with Image.open(io.BytesIO(image)) as opened:
        opened.draft("RGB", (size_px, size_px))
        img = opened.convert("RGB")
    img.thumbnail((size_px, size_px))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size-px", type=int, default=128)
    parser.add_argument("--work-dir", default="bench/.work/thumbnails")
    args = parser.parse_args()
    corpus = corpus_mod.ensure(Path(args.work_dir) / "corpus",
                               corpus_mod.CorpusParams(images=args.images))
    config = DownloadConfig()  # the download step's defaults: 256 px keep_ratio, JPEG q95
    stored, fitted = [], []
    for relpath in corpus.files.column("relpath").to_pylist():
        try:
            img = fit(decode((corpus.root / relpath).read_bytes(), config), config)
        except RowError:  # filtered/undecodable in the download step: no thumbnail either
            continue
        fitted.append(img)
        stored.append(encode(img, config))
    results = {}
    for name, make, inputs in (
            ("webp_q75 from the decoded image (the download step)", thumbnail, fitted),
            ("webp_q75 from the stored JPEG (the write step before)", webp_from_stored, stored),
            ("jpeg_q75 from the stored JPEG (alternative)", jpeg_thumbnail, stored)):
        start = time.process_time()
        sizes = np.array([len(make(x, args.size_px)) for x in inputs])
        cpu_s = time.process_time() - start
        results[name] = {
            "mean_bytes": int(sizes.mean()), "median_bytes": int(np.median(sizes)),
            "p95_bytes": int(np.percentile(sizes, 95)),
            "gb_per_million": round(float(sizes.mean()) * 1e6 / 1e9, 2),
            "cpu_ms_per_image": round(cpu_s / len(stored) * 1e3, 2),
            "cpu_hours_per_million": round(cpu_s / len(stored) * 1e6 / 3600, 2),
        }
    stored_sizes = np.array([len(b) for b in stored])
    print(json.dumps({
        "images": len(stored), "size_px": args.size_px,
        "stored_by_download_step_mean_bytes": int(stored_sizes.mean()),
        "results": results, "pillow": PIL.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
