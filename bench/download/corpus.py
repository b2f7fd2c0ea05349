"""A synthetic, DataComp-like image corpus for the download benchmark.

Sizes (long side): ~72% 300-1,200 px, ~15% 1,200-4,000 px, ~10% 50-300 px, ~3% under 50 px;
formats: ~75% JPEG, ~15% PNG, ~10% WebP; aspect ratios from common photo ratios and a
log-uniform spread up to 3:1. Content is "natural-ish" (smooth gradients, low-frequency colour
noise, blurred shapes and fine grain), so encoded sizes and decode costs look like real photos
rather than flat colour.

The corpus is deterministic for a given (images, seed, generator version) and cached: a
``manifest.json`` is written last and a later call with the same parameters reuses the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump when the images change, so cached corpora are regenerated."""

MANIFEST = "manifest.json"
FILES_PARQUET = "files.parquet"
IMAGES_DIR = "img"

# (name, share, long side min, long side max)
SIZE_CLASSES: list[tuple[str, float, int, int]] = [
    ("tiny", 0.03, 16, 49),
    ("small", 0.10, 50, 299),
    ("medium", 0.72, 300, 1200),
    ("large", 0.15, 1201, 4000),
]
# (extension, share)
FORMATS: list[tuple[str, float]] = [("jpg", 0.75), ("png", 0.15), ("webp", 0.10)]
COMMON_RATIOS = [1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 9 / 16]
MAX_RATIO = 3.0

_WORDS = ["red", "blue", "green", "yellow", "purple", "orange", "grey", "striped", "bright",
          "dark", "round", "square", "small", "large", "blurry", "sunny", "abstract"]
_NOUNS = ["circle", "box", "sky", "field", "painting", "pattern", "photo", "texture", "wall",
          "shape", "landscape", "poster", "sunset", "window", "object"]


@dataclass(frozen=True)
class CorpusParams:
    """Everything that determines the corpus's content (the cache key)."""

    images: int
    seed: int = 0
    version: int = GENERATOR_VERSION


@dataclass(frozen=True)
class ImageSpec:
    """One image to render: where it goes, its size, format and encoder options."""

    index: int
    uid: str
    relpath: str
    width: int
    height: int
    ext: str
    size_class: str


@dataclass(frozen=True)
class Corpus:
    """A generated corpus on disk: ``root/img/...`` plus its table of files."""

    root: Path
    params: CorpusParams
    files: pa.Table  # uid, relpath, caption, width, height, format, size_class, bytes

    @property
    def count(self) -> int:
        return self.files.num_rows

    def summary(self) -> dict[str, Any]:
        """Counts per format and size class, total bytes, and pixel statistics."""
        cols = self.files.to_pydict()
        pixels = np.array(cols["width"], dtype=np.int64) * np.array(cols["height"], dtype=np.int64)
        nbytes = np.array(cols["bytes"], dtype=np.int64)
        return {
            "images": self.count,
            "total_mb": round(float(nbytes.sum()) / 1e6, 1),
            "mean_kb": round(float(nbytes.mean()) / 1e3, 1),
            "median_kb": round(float(np.median(nbytes)) / 1e3, 1),
            "mean_megapixels": round(float(pixels.mean()) / 1e6, 3),
            "formats": dict(Counter(cols["format"])),
            "size_classes": dict(Counter(cols["size_class"])),
        }


def _uid(seed: int, index: int) -> str:
    return hashlib.md5(f"clip-index-bench-{seed}-{index}".encode()).hexdigest()


def _choose(rng: np.random.Generator, table: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    shares = np.array([row[1] for row in table], dtype=float)
    return table[int(rng.choice(len(table), p=shares / shares.sum()))]


def plan(params: CorpusParams) -> list[ImageSpec]:
    """The deterministic list of images to render for these parameters."""
    specs = []
    for index in range(params.images):
        rng = np.random.default_rng([params.seed, index, 1])
        size_class, _, lo, hi = _choose(rng, SIZE_CLASSES)
        ext = str(_choose(rng, FORMATS)[0])
        # long side: log-uniform inside the class (more small than large, like the web)
        long_side = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        if rng.random() < 0.4:
            ratio = float(rng.choice(COMMON_RATIOS))
        else:
            ratio = math.exp(rng.uniform(-math.log(MAX_RATIO), math.log(MAX_RATIO)))
        ratio = max(ratio, 1 / ratio)  # >= 1: long / short
        short_side = max(8, int(round(long_side / ratio)))
        if rng.random() < 0.5:
            width, height = long_side, short_side
        else:
            width, height = short_side, long_side
        uid = _uid(params.seed, index)
        relpath = f"{IMAGES_DIR}/{index // 1000:03d}/{uid}.{ext}"
        specs.append(ImageSpec(index, uid, relpath, width, height, ext, str(size_class)))
    return specs


def _caption(rng: np.random.Generator) -> str:
    words = rng.choice(_WORDS, size=2, replace=False)
    return f"a {words[0]} {words[1]} {rng.choice(_NOUNS)}"


def render(spec: ImageSpec, seed: int) -> Image.Image:
    """Draw one natural-ish image: gradient + colour noise + soft shapes + fine grain."""
    rng = np.random.default_rng([seed, spec.index, 2])
    w, h = spec.width, spec.height
    # Work at a reduced resolution (long side <= 384), then upsample: smooth like a photo.
    factor = max(1.0, max(w, h) / 384)
    lw, lh = max(2, int(round(w / factor))), max(2, int(round(h / factor)))
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(lw, lh)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # colour noise in two octaves (clouds), blurred so the coarse grid does not show
    for cell, amplitude in ((48, rng.uniform(15, 45)), (12, rng.uniform(4, 15))):
        gh, gw = max(2, lh // cell + 2), max(2, lw // cell + 2)
        coarse = np.clip(128 + 40 * rng.normal(0, 1, size=(gh, gw, 3)), 0, 255).astype(np.uint8)
        layer = np.asarray(
            Image.fromarray(coarse, "RGB").resize((lw, lh), Image.Resampling.BICUBIC)
            .filter(ImageFilter.GaussianBlur(radius=cell / 3)),
            dtype=np.float32,
        )
        base = base + (layer - 128) / 40 * amplitude
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(2, 14))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3)) + (int(rng.integers(90, 256)),)
        x0, y0 = rng.uniform(-0.2, 1.0) * lw, rng.uniform(-0.2, 1.0) * lh
        x1, y1 = x0 + rng.uniform(0.05, 0.6) * lw, y0 + rng.uniform(0.05, 0.6) * lh
        kind = int(rng.integers(0, 4))
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 2:
            pts = [(float(rng.uniform(0, lw)), float(rng.uniform(0, lh))) for _ in range(3)]
            draw.polygon(pts, fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 6)))
    del draw
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    if (lw, lh) != (w, h):
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    # Fine grain: a tiled noise patch (cheap for 4,000 px images, still costly to compress).
    grain = float(rng.uniform(3.0, 12.0))
    tile = rng.normal(0, grain, size=(min(h, 257), min(w, 263), 3)).astype(np.int16)
    reps = (math.ceil(h / tile.shape[0]), math.ceil(w / tile.shape[1]), 1)
    arr = np.asarray(img, dtype=np.int16) + np.tile(tile, reps)[:h, :w]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image, spec: ImageSpec, seed: int, path: Path) -> None:
    rng = np.random.default_rng([seed, spec.index, 3])
    if spec.ext == "jpg":
        if rng.random() < 0.05:
            img = img.convert("L")
        img.save(path, "JPEG", quality=int(rng.integers(70, 96)),
                 progressive=bool(rng.random() < 0.15), optimize=bool(rng.random() < 0.3))
    elif spec.ext == "png":
        roll = rng.random()
        if roll < 0.3:  # with an alpha channel
            alpha = Image.linear_gradient("L").resize(img.size).point(lambda v: 80 + v * 175 // 255)
            img = img.copy()
            img.putalpha(alpha)
            img.save(path, "PNG", compress_level=3)
        elif roll < 0.5:  # palette (graphics-like)
            img.quantize(colors=int(rng.integers(16, 256))).save(path, "PNG", compress_level=6)
        else:
            img.save(path, "PNG", compress_level=3)
    else:
        img.save(path, "WEBP", quality=int(rng.integers(70, 91)), method=2)


def _render_one(args: tuple[ImageSpec, int, str]) -> dict[str, Any]:
    spec, seed, root = args
    path = Path(root) / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        _encode(render(spec, seed), spec, seed, tmp)
        os.replace(tmp, path)
    caption = _caption(np.random.default_rng([seed, spec.index, 4]))
    return {
        "uid": spec.uid,
        "relpath": spec.relpath,
        "caption": caption,
        "width": spec.width,
        "height": spec.height,
        "format": spec.ext,
        "size_class": spec.size_class,
        "bytes": path.stat().st_size,
    }


def load(root: Path, params: CorpusParams) -> Corpus | None:
    """The cached corpus at ``root`` if it was made with these parameters and is complete."""
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != asdict(params):
        logger.info("corpus at %s has other parameters (%s): regenerating",
                    root, manifest.get("params"))
        return None
    files = pq.read_table(root / FILES_PARQUET)
    missing = [p for p in files.column("relpath").to_pylist() if not (root / p).exists()]
    if files.num_rows != params.images or missing:
        logger.info("corpus at %s is incomplete (%d missing): regenerating", root, len(missing))
        return None
    return Corpus(root, params, files)


def ensure(root: Path, params: CorpusParams, processes: int = 0) -> Corpus:
    """Load the cached corpus, or (re)generate it with ``processes`` workers (0 = one per core)."""
    cached = load(root, params)
    if cached is not None:
        logger.info("corpus: reusing %d images in %s", cached.count, root)
        return cached
    if (root / MANIFEST).exists():  # made with other parameters: start afresh
        shutil.rmtree(root / IMAGES_DIR, ignore_errors=True)
        (root / MANIFEST).unlink(missing_ok=True)
    # else an interrupted generation: its files are complete (written to a temp name, then
    # renamed) and deterministic per (seed, index), so `_render_one` keeps them
    root.mkdir(parents=True, exist_ok=True)
    specs = plan(params)
    processes = processes or os.cpu_count() or 1
    logger.info("corpus: generating %d images into %s with %d processes",
                params.images, root, processes)
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    work = [(spec, params.seed, str(root)) for spec in specs]
    with mp.get_context("spawn").Pool(processes) as pool:
        for i, row in enumerate(pool.imap(_render_one, work, chunksize=8), 1):
            rows.append(row)
            if i % 1000 == 0 or i == len(work):
                logger.info("corpus: %d/%d images (%.0f s)", i, len(work),
                            time.monotonic() - start)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / FILES_PARQUET)
    manifest = {"params": asdict(params), "seconds": round(time.monotonic() - start, 1)}
    corpus = Corpus(root, params, table)
    manifest["summary"] = corpus.summary()
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, root / MANIFEST)
    logger.info("corpus: done in %.0f s: %s", time.monotonic() - start, manifest["summary"])
    return corpus


URLS_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string())])


def write_url_list(corpus: Corpus, base_url: str, path: Path) -> Path:
    """Write ``uid, url, caption`` parquet (read by both clip-index and img2dataset)."""
    base = base_url.rstrip("/")
    files = corpus.files
    urls = [f"{base}/{p}" for p in files.column("relpath").to_pylist()]
    table = pa.table(
        {"uid": files.column("uid"), "url": pa.array(urls, pa.string()),
         "caption": files.column("caption")},
        schema=URLS_SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
