"""Photo-like synthetic images for tests and benchmarks: natural-image statistics (a 1/f colour
field, hard-edged shapes, soft shadows and fine grain) instead of flat colour, so that resizing,
JPEG encoding and CLIP's preprocess see the detail they would see in a real photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _pink_field(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width, 3) float array in [0, 1] with a 1/f amplitude spectrum and correlated
    channels, like the low frequencies of a photo."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius**1.1
    amplitude[0, 0] = 0.0
    shape = (height, width // 2 + 1)
    base = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    channels = []
    for _ in range(3):
        own = rng.normal(size=shape) + 1j * rng.normal(size=shape)
        spectrum = (0.8 * base + 0.45 * own) * amplitude
        field = np.fft.irfft2(spectrum, s=(height, width))
        channels.append((field - field.mean()) / (field.std() + 1e-9))
    rgb = np.stack(channels, axis=-1) * 0.18 + rng.uniform(0.25, 0.75, size=3)
    return np.clip(rgb, 0.0, 1.0)


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of `width` × `height` pixels with photo-like structure, deterministic in
    `seed`: a 1/f background (made at 1/4 size and upscaled, as cheap as it looks), a few
    dozen shapes with soft shadows at several scales, and per-pixel grain."""
    rng = np.random.default_rng(seed)
    small_h, small_w = max(8, height // 4), max(8, width // 4)
    background = (_pink_field(small_h, small_w, rng) * 255).astype(np.uint8)
    img = Image.fromarray(background).resize((width, height), Image.Resampling.BICUBIC)
    shadows = Image.new("L", (width, height), 0)
    shapes = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw_shadow, draw = ImageDraw.Draw(shadows), ImageDraw.Draw(shapes)
    scale = min(width, height)
    for _ in range(int(rng.integers(25, 60))):
        size = scale * float(rng.choice([0.02, 0.05, 0.1, 0.25], p=[0.35, 0.3, 0.25, 0.1]))
        size *= float(rng.uniform(0.6, 1.4))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        box = [cx - size, cy - size * rng.uniform(0.4, 1.2), cx + size,
               cy + size * rng.uniform(0.4, 1.2)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(110, 240)),)
        offset = size * 0.15
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
            draw_shadow.ellipse([b + offset for b in box], fill=110)
        elif kind == 1:
            points = [(cx + size * np.cos(a), cy + size * np.sin(a))
                      for a in np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))]
            draw.polygon(points, fill=colour)
            draw_shadow.polygon([(x + offset, y + offset) for x, y in points], fill=110)
        else:
            stripes = int(rng.integers(3, 9))  # high-frequency texture
            for k in range(stripes):
                y0 = box[1] + k * (box[3] - box[1]) / stripes
                draw.rectangle([box[0], y0, box[2], y0 + (box[3] - box[1]) / (2 * stripes)],
                               fill=colour)
    shadows = shadows.filter(ImageFilter.GaussianBlur(max(1.0, scale / 150)))
    dark = Image.new("RGB", (width, height), (0, 0, 0))
    img = Image.composite(dark, img, shadows.point(lambda v: v // 2))
    img.paste(shapes, (0, 0), shapes)
    # light falls off towards the corners, as through a lens
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 - 0.35 * (((xx / width - rng.uniform(0.3, 0.7)) ** 2
                           + (yy / height - rng.uniform(0.3, 0.7)) ** 2) * 2)
    grain = rng.normal(0, 7, size=(height, width, 1)).astype(np.float32)
    pixels = np.asarray(img, dtype=np.float32) * light[..., None] + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """`img` encoded as `fmt` bytes (quality for JPEG/WebP)."""
    out = io.BytesIO()
    if fmt == "PNG":
        img.save(out, fmt)
    else:
        img.save(out, fmt, quality=quality)
    return out.getvalue()
