"""WebP decoding scaled to the target size while decoding, through libwebp itself.

Pillow decodes every WebP with libwebp's animation decoder at full size into an RGBA canvas,
then the download step resizes it: 11.5 ms per image on the benchmark's WebPs. libwebp can
scale while it decodes (``WebPDecoderConfig.options.use_scaling``: an area-averaging rescaler
on the YUV planes, alpha premultiplied while scaling), and writes RGB straight into our buffer:
6.5 ms for the same images and output of the same quality (BENCHMARKS.md). No Python binding
exposes those options (Pillow does not; the `webp` package's declarations leave the scaling
fields out), so this is a small ctypes binding to the libwebp that Pillow already loads (its
wheel bundles one), falling back to a system libwebp. Where neither loads, `available()` is
false and the caller decodes with Pillow as before.

Still images only: animations and files carrying EXIF (whose orientation must be applied) are
left to Pillow (`needs_pillow`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# from libwebp's src/webp/decode.h (the ABI's major byte must match; minor versions extend
# only the padding)
_DECODER_ABI_VERSION = 0x0209
_MODE_RGB, _MODE_RGBA = 0, 1
_STATUS = {1: "out of memory", 2: "invalid parameter", 3: "bitstream error",
           4: "unsupported feature", 5: "suspended", 6: "user abort", 7: "not enough data"}


class _BitstreamFeatures(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int),
                ("has_alpha", ctypes.c_int), ("has_animation", ctypes.c_int),
                ("format", ctypes.c_int), ("pad", ctypes.c_uint32 * 5)]


class _RGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int),
                ("size", ctypes.c_size_t)]


class _YUVABuffer(ctypes.Structure):
    _fields_ = [("y", ctypes.c_void_p), ("u", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("a", ctypes.c_void_p), ("y_stride", ctypes.c_int),
                ("u_stride", ctypes.c_int), ("v_stride", ctypes.c_int),
                ("a_stride", ctypes.c_int), ("y_size", ctypes.c_size_t),
                ("u_size", ctypes.c_size_t), ("v_size", ctypes.c_size_t),
                ("a_size", ctypes.c_size_t)]


class _Buffers(ctypes.Union):
    _fields_ = [("RGBA", _RGBABuffer), ("YUVA", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    _fields_ = [("colorspace", ctypes.c_int), ("width", ctypes.c_int),
                ("height", ctypes.c_int), ("is_external_memory", ctypes.c_int),
                ("u", _Buffers), ("pad", ctypes.c_uint32 * 4),
                ("private_memory", ctypes.c_void_p)]


class _DecoderOptions(ctypes.Structure):
    _fields_ = [("bypass_filtering", ctypes.c_int), ("no_fancy_upsampling", ctypes.c_int),
                ("use_cropping", ctypes.c_int), ("crop_left", ctypes.c_int),
                ("crop_top", ctypes.c_int), ("crop_width", ctypes.c_int),
                ("crop_height", ctypes.c_int), ("use_scaling", ctypes.c_int),
                ("scaled_width", ctypes.c_int), ("scaled_height", ctypes.c_int),
                ("use_threads", ctypes.c_int), ("dithering_strength", ctypes.c_int),
                ("flip", ctypes.c_int), ("alpha_dithering_strength", ctypes.c_int),
                ("pad", ctypes.c_uint32 * 5)]


class _DecoderConfig(ctypes.Structure):
    _fields_ = [("input", _BitstreamFeatures), ("output", _DecBuffer),
                ("options", _DecoderOptions)]


class WebPError(ValueError):
    """The data is not a WebP libwebp can decode (the message says why)."""


def _candidates() -> list[str]:
    """Pillow's bundled libwebp first (already loaded by Pillow's WebP plugin), then the
    system's."""
    found: list[str] = []
    try:
        import PIL

        pil_dir = Path(PIL.__file__).parent
        for pattern in ("pillow.libs/libwebp-*.so*", "PIL/.dylibs/libwebp.*.dylib"):
            found += [str(p) for p in sorted(pil_dir.parent.glob(pattern))]
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    system = ctypes.util.find_library("webp")
    if system:
        found.append(system)
    return found


@cache
def _library() -> Any:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.WebPInitDecoderConfigInternal.argtypes = [ctypes.POINTER(_DecoderConfig),
                                                          ctypes.c_int]
            lib.WebPGetFeaturesInternal.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                                    ctypes.POINTER(_BitstreamFeatures),
                                                    ctypes.c_int]
            lib.WebPDecode.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                       ctypes.POINTER(_DecoderConfig)]
            lib.WebPFreeDecBuffer.argtypes = [ctypes.POINTER(_DecBuffer)]
            probe = _DecoderConfig()
            if not lib.WebPInitDecoderConfigInternal(ctypes.byref(probe), _DECODER_ABI_VERSION):
                raise OSError("decoder ABI version mismatch")
        except (OSError, AttributeError) as exc:
            log.debug("libwebp at %s not usable: %s", path, exc)
            continue
        log.debug("scaled WebP decoding through %s", path)
        return lib
    log.info("no usable libwebp found: WebP images are decoded by Pillow at full size")
    return None


def available() -> bool:
    """Whether scaled decoding is possible here."""
    return _library() is not None


def is_webp(data: bytes) -> bool:
    return len(data) >= 16 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def needs_pillow(data: bytes) -> bool:
    """Extended-format files with an animation or EXIF (orientation): Pillow's path."""
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x0A)


def features(data: bytes) -> tuple[int, int, bool]:
    """(width, height, has_alpha) from the headers, without decoding pixels."""
    feats = _BitstreamFeatures()
    status = _library().WebPGetFeaturesInternal(data, len(data), ctypes.byref(feats),
                                                _DECODER_ABI_VERSION)
    if status:
        raise WebPError(f"WebP headers: {_STATUS.get(status, status)}")
    return feats.width, feats.height, bool(feats.has_alpha)


def decode(data: bytes, size: tuple[int, int], alpha: bool, scale: bool = True) -> bytearray:
    """The image as packed RGB (or RGBA when `alpha`) rows of `size`: scaled to it while
    decoding when `scale`, else `size` must be the image's own."""
    lib = _library()
    config = _DecoderConfig()
    if not lib.WebPInitDecoderConfigInternal(ctypes.byref(config), _DECODER_ABI_VERSION):
        raise WebPError("libwebp refused the decoder configuration")  # pragma: no cover
    width, height = size
    channels = 4 if alpha else 3
    pixels = bytearray(width * height * channels)
    config.options.use_scaling = int(scale)
    config.options.scaled_width, config.options.scaled_height = width, height
    output = config.output
    output.colorspace = _MODE_RGBA if alpha else _MODE_RGB
    output.is_external_memory = 1
    view = (ctypes.c_char * len(pixels)).from_buffer(pixels)  # kept alive until decoded
    output.u.RGBA.rgba = ctypes.addressof(view)
    output.u.RGBA.stride = width * channels
    output.u.RGBA.size = len(pixels)
    status = lib.WebPDecode(data, len(data), ctypes.byref(config))
    lib.WebPFreeDecBuffer(ctypes.byref(config.output))
    del view
    if status:
        raise WebPError(f"WebP data: {_STATUS.get(status, status)}")
    return pixels
