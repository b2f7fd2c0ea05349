"""Pure image functions for the download step: decode (with JPEG draft scaling), verify, filter,
resize, orient and re-encode. No I/O; safe to run in worker processes."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from clip_index.config import DownloadConfig
from clip_index.download import vips, webp
from clip_index.download.memory import reuse_freed_memory, trim_if_above
from clip_index.status import RowError, Status

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
    thumbnail: bytes | None = None


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


def _for_resize(img: Image.Image) -> Image.Image:
    """A mode that resizes correctly and cheaply: palette, 16/32-bit, CMYK and other modes are
    converted first; L, LA, RGB and RGBA are resized as they are (fewer channels, or alpha that
    Pillow premultiplies while resizing) and flattened afterwards, on the small image."""
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clipping everything to white
        return img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB: alpha is composited on white, greyscale is expanded."""
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA") if img.mode == "LA" else img
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def process_image(data: bytes, config: DownloadConfig) -> ProcessedImage:
    """Decode `data`, check it, resize per `config`, apply EXIF orientation and re-encode.

    Raises RowError(FAILED_TO_DECODE) for data that is not a complete image (truncated,
    HTML, decompression bombs) and RowError(FILTERED) for images the filters refuse.
    """
    decoded = decode(data, config)
    img = fit(decoded, config)
    return ProcessedImage(
        data=encode(img, config),
        width=img.width,
        height=img.height,
        original_width=decoded.original_size[0],
        original_height=decoded.original_size[1],
        sha256=hashlib.sha256(data).hexdigest(),
        thumbnail=thumbnail(img, config.thumbnail_px) if config.thumbnail_px else None,
    )


THUMBNAIL_QUALITY = 75


def thumbnail(img: Image.Image, size_px: int, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A WebP of `img` (already decoded and resized: the thumbnail costs a resize of ~256 px
    and an encode, no decode) whose long side is at most `size_px`, never upscaled."""
    small = img.copy()
    small.thumbnail((size_px, size_px), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, "WEBP", quality=quality, method=4)
    return out.getvalue()


def decode(data: bytes, config: DownloadConfig) -> Decoded:
    """The image, decoded as small as the target allows (libvips' streaming shrink for PNGs,
    libwebp's scaling for still WebPs, DCT scaling for JPEGs), after the size checks."""
    return (_decode_vips(data, config) or _decode_webp_scaled(data, config)
            or _decode(data, config))


def fit(decoded: Decoded, config: DownloadConfig) -> Image.Image:
    """The decoded image resized, turned upright, flattened to RGB and cropped or padded."""
    img = _for_resize(decoded.image)
    if config.resize_mode != "no" and decoded.stored_target != img.size:
        # box-reduce to within 2x of the target, then an antialiased bilinear (triangle)
        # filter: 2.5x cheaper than Lanczos with reducing_gap=3 and 46 dB PSNR against a
        # full-resolution Lanczos reference on a DataComp-like mix (see BENCHMARKS.md)
        img = img.resize(decoded.stored_target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if decoded.orientation in _TRANSPOSE:
        # on the small image: cheaper than rotating the original
        img = img.transpose(_TRANSPOSE[decoded.orientation])
    return _crop_or_pad(_to_rgb(img), config)


def encode(img: Image.Image, config: DownloadConfig) -> bytes:
    out = io.BytesIO()
    fmt = _FORMATS[config.encode_format]
    if fmt == "PNG":
        img.save(out, fmt)
    else:
        img.save(out, fmt, quality=config.encode_quality)
    return out.getvalue()


@dataclass(frozen=True)
class Decoded:
    """A decoded image (maybe already reduced), the size to resize it to before orienting
    it, the EXIF orientation still to apply, and the original's size as displayed."""

    image: Image.Image
    stored_target: tuple[int, int]
    orientation: int
    original_size: tuple[int, int]


def _check_size(width: int, height: int, config: DownloadConfig) -> None:
    """Refuse decompression bombs and what the filters refuse, before decoding pixels."""
    if width * height > config.max_image_pixels:
        raise RowError(
            Status.FAILED_TO_DECODE,
            f"decompression_bomb: {width}x{height} passes "
            f"max_image_pixels={config.max_image_pixels}",
        )
    _check_filters(width, height, config)


def _decode(data: bytes, config: DownloadConfig) -> Decoded:
    """Decode with Pillow: JPEGs at the smallest DCT scale that stays >= the target."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            stored_w, stored_h = img.size
            _check_size(stored_w, stored_h, config)
            orientation = _orientation(img, data)
            # sizes as displayed: orientations 5-8 swap the sides
            swap = orientation in (5, 6, 7, 8)
            original = (stored_h, stored_w) if swap else (stored_w, stored_h)
            target = _target_size(*original, config)
            stored_target = (target[1], target[0]) if swap else target
            if img.format == "JPEG" and config.resize_mode != "no":
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size when that stays >= the target
                img.draft("RGB", stored_target)
            img.seek(0)  # first frame of animations
            img.load()
    except RowError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowError(Status.FAILED_TO_DECODE, f"decompression_bomb: {exc}") from exc
    except Exception as exc:  # PIL raises many types for broken data
        raise RowError(Status.FAILED_TO_DECODE, f"decode_error: {exc}"[:300]) from exc
    return Decoded(img, stored_target, orientation, original)


def _decode_webp_scaled(data: bytes, config: DownloadConfig) -> Decoded | None:
    """A still WebP without EXIF, decoded by libwebp straight at the target size (see
    webp.py); None for anything else, which `_decode` handles."""
    if not (webp.is_webp(data) and not webp.needs_pillow(data) and webp.available()):
        return None
    try:
        width, height, alpha = webp.features(data)
        _check_size(width, height, config)
        target = _target_size(width, height, config)
        pixels = webp.decode(data, target, alpha, scale=target != (width, height))
    except webp.WebPError as exc:
        raise RowError(Status.FAILED_TO_DECODE, f"decode_error: {exc}"[:300]) from exc
    mode = "RGBA" if alpha else "RGB"
    img = Image.frombuffer(mode, target, pixels, "raw", mode, 0, 1)
    return Decoded(img, target, 1, (width, height))


def _decode_vips(data: bytes, config: DownloadConfig) -> Decoded | None:
    """A (large) PNG decoded by libvips straight to the target size (see vips.py); None for
    other formats, smaller PNGs under "auto", EXIF-rotated PNGs (rare: Pillow applies their
    orientation) or where libvips does not load: the other decoders handle those."""
    if not vips.handles(data, config.image_decoder) or not vips.available():
        return None
    try:
        width, height, orientation = vips.header(data)
        if orientation != 1 or png_chunk(data, b"eXIf") is not None:
            return None  # libvips' header misses an eXIf after the pixels: Pillow's path
        _check_size(width, height, config)  # before a single pixel is decoded
        target = _target_size(width, height, config)
        mode, size, pixels = vips.thumbnail(data, target)
    except vips.VipsError as exc:
        raise RowError(Status.FAILED_TO_DECODE, f"decode_error: {exc}"[:300]) from exc
    img = Image.frombuffer(mode, size, pixels, "raw", mode, 0, 1)
    return Decoded(img, size, 1, (width, height))


# EXIF orientation → the transpose that displays the image upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image, data: bytes) -> int:
    """The EXIF orientation tag (1 = upright) of an opened image; 1 when absent or broken.

    For a PNG the eXIf chunk is read from `data` (before or after the pixels) without
    decoding: Pillow's `getexif` loads the whole image to look for one after the pixels, and
    here its errors were swallowed, so a PNG broken past its header "decoded" to whatever
    pixels came before the break, and the `load` after it raised nothing."""
    try:
        if img.format == "PNG":
            raw = img.info.get("exif") or png_chunk(data, b"eXIf")
            profile = img.info.get("Raw profile type exif")  # ImageMagick's text chunk
            if not raw and isinstance(profile, str):  # read as Pillow's getexif reads it
                raw = bytes.fromhex("".join(profile.split("\n")[3:]))
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw if raw.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + raw)
        else:
            exif = img.getexif()
        value = exif.get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # a broken EXIF block must not fail an image that decodes
        return 1


def png_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The data of the first `kind` chunk of PNG `data`, by walking the chunk headers (no
    inflate, no CRC check); None when there is none before IEND or the data ends."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == kind:
            return data[pos + 8:pos + 8 + length]
        if data[pos + 4:pos + 8] == b"IEND":
            return None
        pos += 12 + length
    return None


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


def _crop_or_pad(img: Image.Image, config: DownloadConfig) -> Image.Image:
    """center_crop: the centre `image_size` square; border: pad to a white square."""
    size = config.image_size
    tw, th = img.size
    if config.resize_mode == "center_crop" and (tw > size or th > size):
        left, top = (tw - min(tw, size)) // 2, (th - min(th, size)) // 2
        img = img.crop((left, top, left + min(tw, size), top + min(th, size)))
    elif config.resize_mode == "border" and (tw, th) != (size, size):
        canvas = Image.new("RGB", (max(tw, size), max(th, size)), (255, 255, 255))
        canvas.paste(img, ((canvas.width - tw) // 2, (canvas.height - th) // 2))
        img = canvas
    return img


_WORKER_CONFIG: DownloadConfig | None = None


def init_worker(config: DownloadConfig) -> None:
    """Process-pool initializer: the config is sent once per worker, not once per image."""
    global _WORKER_CONFIG
    _WORKER_CONFIG = config
    reuse_freed_memory()
    if config.image_decoder != "pillow":
        vips.available()  # load libvips (configured) once per worker, not on the first PNG


def process_batch(bodies: list[bytes]) -> list[ProcessedImage | tuple[str, str]]:
    """Process several bodies in a worker (one round trip for many images): a ProcessedImage
    or (status, error) per body. Never raises for one image's fault, so nothing but plain
    data crosses the process boundary."""
    config = _WORKER_CONFIG
    if config is None:  # pragma: no cover - a pool made without init_worker
        raise RuntimeError("process_batch: the worker was not initialised with init_worker")
    results: list[ProcessedImage | tuple[str, str]] = []
    for body in bodies:
        try:
            results.append(process_image(body, config))
        except RowError as exc:
            results.append((exc.status.value, str(exc)))
        except Exception as exc:  # a decoder bug must cost one row, not the shard
            results.append((Status.FAILED_TO_DECODE.value,
                            f"decode_error: {type(exc).__name__}: {exc}"[:300]))
    trim_if_above()  # decoded originals are tens of MB: bound what the worker's heap keeps
    return results


def image_changed(sha256: str | None, source_sha256: str | None) -> bool | None:
    """True when the downloaded bytes' hash differs from the one the source recorded (the
    image changed since the crawl); None when either is missing (failed row, no hash)."""
    if not sha256 or not source_sha256:
        return None
    return sha256.lower() != source_sha256.strip().lower()
