"""PNGs in the download step: a PNG broken past its header is a row error, never a success
row of partial pixels, and the EXIF orientation of a PNG is read from its eXIf chunk, before
or after the pixels, without decoding the image for it."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from clip_index.config import DownloadConfig
from clip_index.download import resize
from clip_index.status import RowError, Status


def _png(width: int = 640, height: int = 420, **kw: object) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", **kw)
    return out.getvalue()


def _rotated_png(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _png(400, 260, exif=exif.tobytes())


def _move_exif_after_idat(data: bytes) -> bytes:
    """The PNG with its eXIf chunk moved from before the pixels to just before IEND."""
    start = data.index(b"eXIf") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    chunk = data[start:start + 12 + length]
    rest = data[:start] + data[start + 12 + length:]
    end = rest.index(b"IEND") - 4
    return rest[:end] + chunk + rest[end:]


DECODERS = ["auto", "pillow", "vips"]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("data", [
    _png()[:20_000],  # truncated in the pixels
    _png()[:100] + b"\x00garbage" * 500,  # garbage after the header: it "decoded" before
], ids=["truncated", "garbage-after-header"])
def test_a_png_broken_past_its_header_is_a_row_error(data: bytes, decoder: str) -> None:
    with pytest.raises(RowError) as caught:
        resize.process_image(data, DownloadConfig(image_size=224, image_decoder=decoder))
    assert caught.value.status is Status.FAILED_TO_DECODE


@pytest.mark.parametrize("decoder", DECODERS)
def test_png_exif_orientation_before_or_after_the_pixels(decoder: str) -> None:
    before = _rotated_png(6)  # 400 x 260 stored, orientation 6: 260 x 400 upright
    after = _move_exif_after_idat(before)
    assert after.index(b"eXIf") > after.index(b"IDAT")
    config = DownloadConfig(image_size=130, image_decoder=decoder)
    outs = [resize.process_image(data, config) for data in (before, after)]
    for out in outs:
        assert (out.width, out.height, out.original_width, out.original_height) == (
            130, 200, 260, 400)
    assert outs[0].data == outs[1].data
    upright = resize.process_image(_png(260, 400), config)  # the same size, no EXIF
    assert (upright.width, upright.height) == (130, 200)


def test_reading_a_png_orientation_decodes_no_pixels() -> None:
    data = _move_exif_after_idat(_rotated_png(3))
    img = Image.open(io.BytesIO(data))
    assert resize._orientation(img, data) == 3
    assert img.tile  # still not loaded: no pixel decoded
    assert resize.png_chunk(data, b"eXIf") is not None
    assert resize.png_chunk(_png(), b"eXIf") is None
    assert resize.png_chunk(data[:40], b"eXIf") is None  # cut short: no chunk, no error


def test_a_broken_exif_chunk_leaves_the_image_upright() -> None:
    data = _png(400, 260)
    payload = b"\xff" * 8  # not TIFF-structured EXIF; its CRC is right, so the PNG opens
    chunk = (len(payload).to_bytes(4, "big") + b"eXIf" + payload
             + (zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF).to_bytes(4, "big"))
    at = data.index(b"IDAT") - 4
    out = resize.process_image(data[:at] + chunk + data[at:], DownloadConfig(image_size=130))
    assert (out.original_width, out.original_height) == (400, 260)


def test_png_orientation_from_imagemagick_raw_profile_text_chunk() -> None:
    """ImageMagick keeps a PNG's EXIF in a "Raw profile type exif" text chunk; Pillow's
    getexif reads it, and so does the step."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 6
    payload = b"Exif\x00\x00" + exif.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(payload):8d}\n{payload.hex()}\n")
    data = _png(400, 260, pnginfo=info)
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6  # Pillow's own reading
    out = resize.process_image(data, DownloadConfig(image_size=130))
    assert (out.original_width, out.original_height) == (260, 400)
