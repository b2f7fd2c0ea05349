"""Pure image functions for the download step: decode (with JPEG draft scaling), verify, filter,
orient, resize and re-encode. No I/O; safe to run in worker processes."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from clip_index.config import DownloadConfig
from clip_index.schema import RowError, Status

_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class ProcessedImage:
    """A re-encoded image and its sizes (pixels) before and after the resize."""

    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str


def _target_size(width: int, height: int, config: DownloadConfig) -> tuple[int, int]:
    """The size to resize to before any crop/pad: never larger than the original."""
    size = config.image_size
    if config.resize_mode == "no":
        return width, height
    if config.resize_mode == "border":
        scale = size / max(width, height)
    else:  # keep_ratio and center_crop scale the shorter side to `size`
        scale = size / min(width, height)
    scale = min(scale, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for any mode: alpha is composited on white, CMYK/16-bit/palette are converted."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clipping everything to white
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB") if img.mode != "RGB" else img


def process_image(data: bytes, config: DownloadConfig) -> ProcessedImage:
    """Decode `data`, check it, apply EXIF orientation, resize per `config` and re-encode.

    Raises RowError(FAILED_TO_DECODE) for data that is not a complete image (truncated,
    HTML, decompression bombs) and RowError(FILTERED) for images the filters refuse.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            original_width, original_height = img.size
            if original_width * original_height > config.max_image_pixels:
                raise RowError(
                    Status.FAILED_TO_DECODE,
                    f"too_many_pixels: {original_width}x{original_height} passes "
                    f"max_image_pixels={config.max_image_pixels}",
                )
            _check_filters(original_width, original_height, config)
            if img.format == "JPEG" and config.resize_mode != "no":
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size when that stays >= the target
                img.draft("RGB", _target_size(original_width, original_height, config))
            img.seek(0)  # first frame of animations
            img.load()
    except RowError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowError(Status.FAILED_TO_DECODE, f"decompression_bomb: {exc}") from exc
    except Exception as exc:  # PIL raises many types for broken data
        raise RowError(Status.FAILED_TO_DECODE, f"decode_error: {exc}"[:300]) from exc
    img = ImageOps.exif_transpose(img) or img
    oriented_w, oriented_h = _oriented(original_width, original_height, img)
    img = _to_rgb(img)
    img = _resize(img, oriented_w, oriented_h, config)
    out = io.BytesIO()
    fmt = _FORMATS[config.encode_format]
    if fmt == "PNG":
        img.save(out, fmt)
    else:
        img.save(out, fmt, quality=config.encode_quality)
    encoded = out.getvalue()
    return ProcessedImage(
        data=encoded,
        width=img.width,
        height=img.height,
        original_width=oriented_w,
        original_height=oriented_h,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _oriented(width: int, height: int, img: Image.Image) -> tuple[int, int]:
    """Original size after the EXIF rotation (a 90° rotation swaps the sides)."""
    if (img.width > img.height) != (width > height) and width != height:
        return height, width
    return width, height


def _check_filters(width: int, height: int, config: DownloadConfig) -> None:
    if min(width, height) < max(config.min_image_size, 1):
        raise RowError(
            Status.FILTERED,
            f"too_small: {width}x{height} is below min_image_size={config.min_image_size}",
        )
    ratio = max(width, height) / min(width, height)
    if config.max_aspect_ratio and ratio > config.max_aspect_ratio:
        raise RowError(
            Status.FILTERED,
            f"aspect_ratio: {width}x{height} ({ratio:.1f}) passes "
            f"max_aspect_ratio={config.max_aspect_ratio}",
        )


def _resize(img: Image.Image, width: int, height: int, config: DownloadConfig) -> Image.Image:
    if config.resize_mode == "no":
        return img
    tw, th = _target_size(width, height, config)
    if (tw, th) != img.size:
        # reducing_gap: a fast box pre-shrink, then Lanczos: Pillow's recommended quality/speed
        img = img.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=3.0)
    size = config.image_size
    if config.resize_mode == "center_crop" and (tw > size or th > size):
        left, top = (tw - min(tw, size)) // 2, (th - min(th, size)) // 2
        img = img.crop((left, top, left + min(tw, size), top + min(th, size)))
    elif config.resize_mode == "border" and (tw, th) != (size, size):
        canvas = Image.new("RGB", (max(tw, size), max(th, size)), (255, 255, 255))
        canvas.paste(img, ((canvas.width - tw) // 2, (canvas.height - th) // 2))
        img = canvas
    return img
