"""libvips decoding for the download step: large PNGs decoded and shrunk in one streaming pass,
through the `pyvips` + `pyvips-binary` wheels.

Measured on the benchmark corpus (BENCHMARKS.md, "libvips"), one core: libvips' PNG decode is
no faster than Pillow's (both inflate with zlib and unfilter in C; Pillow's zlib-ng is the
faster inflate), and each libvips call costs a fixed setup, so for the typical web PNG Pillow's
path (full decode, box reduce, bilinear) stays the faster one. From a few megapixels up libvips
wins (its line-by-line shrink never holds the original: a 20 MP RGBA PNG is 80 MB in Pillow),
so `image_decoder="auto"` sends PNGs of `VIPS_MIN_PIXELS` or more to libvips and "vips" sends
every PNG there. JPEG stays on Pillow's DCT-scaled path and still WebP on libwebp's scaled
decode (webp.py): both measured faster than libvips.

Bounded like the rest of the step: the header is read first and the pixel limit and size
filters are checked before any pixel is decoded; no operation cache (`cache_set_max(0)`), one
libvips thread per decode worker (`concurrency_set(1)`: the pool already has one worker per
core); any libvips error is a row error (`failed_to_decode`). pyvips is imported lazily, in the
worker that uses it and never in a process that forks; where it cannot load, `available()` is
false, the step decodes with Pillow and `warn_if_unavailable` says so once.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VIPS_MIN_PIXELS = 4_000_000  # "auto": PNGs this large or larger go to libvips (measured)
# 16-bit bands are scaled to 8 bits; the shift keeps the full range (65535 >> 8 = 255)
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class VipsError(Exception):
    """libvips refused the data (broken, truncated, unsupported)."""


@cache
def _pyvips() -> Any:
    """The pyvips module, configured for worker use; None when it cannot load."""
    try:
        import pyvips  # noqa: PLC0415 - lazy: loading libvips must not happen before a fork
    except Exception as exc:  # ImportError, OSError (no libvips), cffi errors
        _pyvips_error.append(f"{type(exc).__name__}: {exc}")
        return None
    # libvips reports every operation through GLib at INFO: one line per stage per image
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    pyvips.cache_set_max(0)  # no operation cache across images: each image is seen once
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(1)  # one thread: the decode pool runs one worker per core
    pyvips.block_untrusted_set(True)  # loaders libvips marks unfuzzed are refused
    return pyvips


_pyvips_error: list[str] = []


def available() -> bool:
    """Whether libvips loads in this process."""
    return _pyvips() is not None


def warn_if_unavailable() -> bool:
    """Log once (per process) that the step falls back to Pillow when libvips cannot load;
    returns `available()`."""
    if available():
        return True
    _warn_once(_pyvips_error[0] if _pyvips_error else "unknown reason")
    return False


@cache
def _warn_once(reason: str) -> None:
    log.warning("libvips is unavailable (%s): PNG and WebP are decoded with Pillow, about 2x "
                "slower; install pyvips and pyvips-binary", reason)


def handles(data: bytes, decoder: str) -> bool:
    """Whether this body goes to libvips under `decoder` (auto / vips / pillow): PNGs (APNGs give
    their first frame, as Pillow), under "auto" only those of `VIPS_MIN_PIXELS` or more (read
    from the IHDR chunk: no library call)."""
    if decoder == "pillow" or data[:8] != _PNG_MAGIC:
        return False
    if decoder == "vips":
        return True
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width * height >= VIPS_MIN_PIXELS


def header(data: bytes) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from the header alone: no pixels decoded."""
    vips = _pyvips()
    try:
        image = vips.Image.new_from_buffer(data, "", access="sequential")
        orientation = image.get("orientation") if image.get_typeof("orientation") else 1
        return int(image.width), int(image.height), int(orientation or 1)
    except vips.Error as exc:
        raise VipsError(_message(exc)) from exc


def thumbnail(data: bytes, size: tuple[int, int]) -> tuple[str, tuple[int, int], bytes]:
    """The first frame decoded and shrunk to exactly `size` (width, height as displayed: EXIF
    orientation applied), in one streaming pass; (Pillow mode, size, pixels) with 8-bit
    bands, alpha kept straight (the caller composites it on white)."""
    vips = _pyvips()
    try:
        # size="force": the exact size the Pillow path gives (computed once, by the caller);
        # the loader's fail=true: truncated or corrupt data is an error, not a grey image
        # (thumbnail's own fail_on does not reach the loader: measured, libvips 8.18)
        image = vips.Image.thumbnail_buffer(data, size[0], height=size[1], size="force",
                                            option_string="fail=true")
        if image.format != "uchar":
            image = (image >> 8).cast("uchar") if image.format == "ushort" else image.cast("uchar")
        if image.bands not in _MODES:
            raise VipsError(f"{image.bands} bands")
        pixels = image.write_to_memory()
    except vips.Error as exc:
        raise VipsError(_message(exc)) from exc
    return _MODES[image.bands], (image.width, image.height), pixels


def _message(exc: Exception) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text[:250]
