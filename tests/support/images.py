"""Every image the tests make, as encoded bytes or PIL images (no files on disk): flat colours
(`image_bytes`), shapes (`shape_jpeg`), the awkward formats real datasets hold (CMYK, palette,
16-bit, animated, EXIF-rotated, a decompression bomb) and photo-like images (`photo_like`:
natural-image statistics, a 1/f colour field, hard-edged shapes, soft shadows and fine grain,
so that resizing, JPEG encoding and CLIP's preprocess see the detail of a real photo)."""

from __future__ import annotations

import io
import struct
import zlib

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


def image_bytes(width: int = 64, height: int = 48, colour: object = (200, 30, 30),
                fmt: str = "JPEG", mode: str = "RGB", **save: object) -> bytes:
    """A flat-colour image of `mode`, encoded as `fmt` (PIL's save options in `save`)."""
    img = Image.new(mode, (width, height), colour)  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def noisy_jpeg(width: int, height: int, quality: int = 90, seed: int = 0) -> bytes:
    """A JPEG with real content (so its encoded size and decode cost look like a photo's)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return image_bytes(80, 60, (0, 255, 255, 0), "JPEG", "CMYK")


def palette_png(transparent: bool = False) -> bytes:
    img = Image.new("P", (40, 30), 1)
    img.putpalette([255, 255, 255, 0, 0, 255] + [0] * (256 * 3 - 6))
    buf = io.BytesIO()
    img.save(buf, "PNG", **({"transparency": 1} if transparent else {}))
    return buf.getvalue()


def png_16bit() -> bytes:
    """A 16-bit greyscale PNG at mid grey (32768): a naive 8-bit clip turns it white."""
    return image_bytes(32, 32, 32768, "PNG", "I;16")


def animated_gif() -> bytes:
    """Two frames: red first, then blue."""
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg(width: int = 80, height: int = 40, orientation: int = 6) -> bytes:
    """A landscape JPEG whose EXIF says 'rotate 90°': displayed, it is portrait."""
    img = Image.new("RGB", (width, height), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A few-hundred-byte PNG whose header claims width × height pixels."""
    raw = b"\x00\x00"  # one scanline: filter byte + one pixel; the rest is missing

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def shape_jpeg(shape: str, colour: tuple[int, int, int], size: int = 96) -> bytes:
    """A circle, square or triangle of `colour` on a light background (the sample's images)."""
    img = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, size // 5), (size * 4 // 5, size * 4 // 5),
                      (size // 5, size * 4 // 5)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()
