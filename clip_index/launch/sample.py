"""Synthetic sample: a deterministic image+caption dataset of coloured shapes (demo and tests)."""

from __future__ import annotations

import io
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross", "heart"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "green": (25, 150, 45),
    "blue": (30, 70, 215),
    "yellow": (245, 205, 10),
    "purple": (135, 35, 165),
    "orange": (245, 120, 15),
}
KINDS: list[tuple[str, str]] = [(shape, colour) for shape in SHAPES for colour in COLOURS]
"""Every (shape, colour) pair the sample draws: 6 shapes x 6 colours."""

SIZES: dict[str, tuple[float, float]] = {
    "small": (0.12, 0.18),
    "medium": (0.18, 0.25),
    "large": (0.25, 0.33),
}
"""Shape radius per size word, as a fraction of the image side."""

FORMATS: list[tuple[str, str, dict[str, int]]] = [
    ("jpg", "JPEG", {"quality": 90}),
    ("png", "PNG", {"compress_level": 1}),
    ("webp", "WEBP", {"quality": 85, "method": 2}),
]
"""(file extension, Pillow format, save options) in the order images cycle through them."""

CAPTIONS_FILE = "captions.parquet"
IMAGES_DIR = "images"
SAMPLE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("file", pa.string()),
        ("text", pa.string()),
        ("shape", pa.string()),
        ("colour", pa.string()),
    ]
)

_MAX_ROTATION_DEG = 20.0
_COLOUR_JITTER = 18
_NOISE_AMPLITUDE = 8
_POSITIONS = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)


@dataclass(frozen=True)
class Layout:
    """Where a shape sits: centre and radius as fractions of the image side, rotation in degrees."""

    cx: float
    cy: float
    radius: float
    rotation_deg: float
    size: str

    @property
    def position(self) -> str:
        """The centre's cell of a 3x3 grid as a phrase: "in the top left", "at the top", ..."""
        return _POSITIONS[min(int(self.cy * 3), 2)][min(int(self.cx * 3), 2)]


def _as_random(rng: random.Random | np.random.Generator) -> random.Random:
    """A `random.Random` from either kind of generator (a numpy one seeds a new Random from it)."""
    if isinstance(rng, random.Random):
        return rng
    return random.Random(int(rng.integers(2**63)))


def random_layout(rng: random.Random | np.random.Generator) -> Layout:
    """Draw a size word, a radius for it, a centre that keeps the shape inside, and a rotation."""
    r = _as_random(rng)
    size = r.choice(list(SIZES))
    radius = r.uniform(*SIZES[size])
    margin = radius + 0.02
    return Layout(
        cx=r.uniform(margin, 1 - margin),
        cy=r.uniform(margin, 1 - margin),
        radius=radius,
        rotation_deg=r.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG),
        size=size,
    )


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon of a shape in unit coordinates (fits the circle of radius 1 around the origin)."""
    if shape == "circle":
        return [(math.cos(2 * math.pi * k / 64), math.sin(2 * math.pi * k / 64)) for k in range(64)]
    if shape == "square":
        s = 0.8
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [
            (math.cos(a) * rad, math.sin(a) * rad)
            for k in range(10)
            for a, rad in [(-math.pi / 2 + k * math.pi / 5, 1.0 if k % 2 == 0 else 0.42)]
        ]
    if shape == "cross":
        a, b = 0.3, 0.9
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
                (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]  # fmt: skip
    if shape == "heart":
        points = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 17, -(y + 2.5) / 15))
        return points
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _jitter(rgb: tuple[int, int, int], r: random.Random, amount: int) -> tuple[int, int, int]:
    """Move each channel by up to ±amount, clipped to 0..255."""
    red, green, blue = (min(255, max(0, c + r.randint(-amount, amount))) for c in rgb)
    return red, green, blue


def draw_shape(
    shape: str,
    colour: str,
    rng: random.Random | np.random.Generator,
    size_px: int = 256,
    layout: Layout | None = None,
) -> Image.Image:
    """Draw one `colour` `shape` on a light background with a little pixel noise.

    Args:
        shape: one of `SHAPES`.
        colour: one of `COLOURS`.
        rng: source of every random choice (layout, colour jitter, background, noise).
        size_px: side of the square image, in pixels.
        layout: where to draw it; a `random_layout(rng)` when None.

    Returns:
        An RGB image of `size_px` x `size_px` pixels.
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    outline = _unit_outline(shape)
    r = _as_random(rng)
    layout = layout or random_layout(r)
    background = tuple(r.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size_px, size_px), background)
    angle = math.radians(layout.rotation_deg)
    cos, sin, scale = math.cos(angle), math.sin(angle), layout.radius * size_px
    centre_x, centre_y = layout.cx * size_px, layout.cy * size_px
    polygon = [
        (centre_x + scale * (x * cos - y * sin), centre_y + scale * (x * sin + y * cos))
        for x, y in outline
    ]
    ImageDraw.Draw(image).polygon(polygon, fill=_jitter(COLOURS[colour], r, _COLOUR_JITTER))
    noise = np.random.default_rng(r.getrandbits(64)).integers(
        -_NOISE_AMPLITUDE, _NOISE_AMPLITUDE + 1, (size_px, size_px, 3), dtype=np.int16
    )
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def caption(shape: str, colour: str, layout: Layout, r: random.Random) -> str:
    """A caption that always names the colour and the shape, sometimes the size and position."""
    templates = [
        "{colour} {shape}",
        "{size} {colour} {shape}",
        "{colour} {shape} {position}",
        "{size} {colour} {shape} {position}",
    ]
    phrase = r.choice(templates).format(
        colour=colour, shape=shape, size=layout.size, position=layout.position
    )
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{r.choice(['', 'a picture of '])}{article} {phrase}"


def _encode(image: Image.Image, pil_format: str, options: dict[str, int]) -> bytes:
    """Encode an image to bytes in a Pillow format with fixed, deterministic settings."""
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def make_sample(
    out_dir: str | Path, n_images: int = 480, seed: int = 0, size_px: int = 256
) -> pa.Table:
    """Write `n_images` shape images to `out_dir/images/` and their captions to `captions.parquet`.

    Kinds are balanced (each of `KINDS` appears `n_images / len(KINDS)` times, rounded) and
    shuffled; formats cycle JPEG, PNG, WebP. The same seed gives byte-identical files.

    Args:
        out_dir: local folder to write into (created if missing).
        n_images: number of images.
        seed: seed of every random choice.
        size_px: side of each square image, in pixels.

    Returns:
        The captions table: `uid`, `file` (relative to `out_dir`), `text`, `shape`, `colour`.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(n_images)]
    r.shuffle(kinds)
    rows: dict[str, list[str]] = {name: [] for name in SAMPLE_SCHEMA.names}
    for i, (shape, colour) in enumerate(kinds):
        uid = f"sample-{i:06d}"
        ext, pil_format, options = FORMATS[i % len(FORMATS)]
        layout = random_layout(r)
        image = draw_shape(shape, colour, r, size_px=size_px, layout=layout)
        file = f"{IMAGES_DIR}/{uid}.{ext}"
        (out / file).write_bytes(_encode(image, pil_format, options))
        text = caption(shape, colour, layout, r)
        for name, value in zip(SAMPLE_SCHEMA.names, (uid, file, text, shape, colour), strict=True):
            rows[name].append(value)
    table = pa.table(rows, schema=SAMPLE_SCHEMA)
    pq.write_table(table, out / CAPTIONS_FILE)
    logger.info(
        "wrote %d sample images to %s in %.2f s", n_images, out, time.perf_counter() - started
    )
    return table


def sample_urls(table: pa.Table, base_url: str) -> pa.Table:
    """Turn a `make_sample` table into an image-URL dataset: uid, url, text, shape, colour.

    Args:
        table: the table `make_sample` returned (or its `captions.parquet`).
        base_url: where `out_dir` is served, e.g. `http://127.0.0.1:8000` (a trailing / is ignored).
    """
    base = base_url.rstrip("/")
    urls = pa.array([f"{base}/{file}" for file in table.column("file").to_pylist()], pa.string())
    return pa.table(
        {
            "uid": table.column("uid"),
            "url": urls,
            "text": table.column("text"),
            "shape": table.column("shape"),
            "colour": table.column("colour"),
        }
    )
