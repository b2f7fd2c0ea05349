"""Scaled WebP decoding (clip_index/download/webp.py) and its place in the download step's image
processing: the same images as Pillow's full-size path at the same quality, alpha composited
correctly, and everything it does not handle (animations, EXIF, broken data) still handled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clip_index.config import DownloadConfig
from clip_index.download import resize, webp
from clip_index.schema import RowError
from tests.support.images import photo_like

CONFIG = DownloadConfig(image_size=224, resize_mode="keep_ratio")


def _webp(img: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, "WEBP", **options)
    return out.getvalue()


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def _output(data: bytes, config: DownloadConfig = CONFIG) -> Image.Image:
    return Image.open(io.BytesIO(resize.process_image(data, config).data))


def test_pillow_bundles_a_libwebp_we_can_use() -> None:
    # the speed-up silently disappearing (Pillow moving its libraries) must fail a test
    assert webp.available()


@pytest.mark.parametrize("options", [{"quality": 90}, {"lossless": True}],
                         ids=["lossy", "lossless"])
def test_scaled_decode_matches_a_full_decode_and_lanczos(
        options: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    original = photo_like(900, 600, seed=3)
    data = _webp(original, **options)
    assert webp.is_webp(data) and not webp.needs_pillow(data)
    assert webp.features(data) == (900, 600, False)
    pixels = webp.decode(data, (336, 224), alpha=False)
    scaled = Image.frombuffer("RGB", (336, 224), pixels, "raw", "RGB", 0, 1)
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize(
        (336, 224), Image.Resampling.LANCZOS)
    assert _psnr(scaled, reference) > 38
    # the whole step: right size, original size recorded, and at least as close to the
    # reference after the JPEG q95 re-encode as Pillow's full-size decode + resize
    result = resize.process_image(data, CONFIG)
    assert (result.width, result.height) == (336, 224)
    assert (result.original_width, result.original_height) == (900, 600)
    monkeypatch.setattr(webp, "available", lambda: False)
    through_pillow = resize.process_image(data, CONFIG)
    assert through_pillow.data != result.data  # the comparison is between two paths
    assert (_psnr(Image.open(io.BytesIO(result.data)), reference)
            >= _psnr(Image.open(io.BytesIO(through_pillow.data)), reference) - 0.25)


def test_unscaled_decode_is_pillows_decode_exactly() -> None:
    data = _webp(photo_like(200, 150, seed=4), quality=80)  # smaller than the target
    pixels = webp.decode(data, (200, 150), alpha=False, scale=False)
    ours = np.frombuffer(bytes(pixels), np.uint8).reshape(150, 200, 3)
    assert np.array_equal(ours, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_alpha_is_scaled_premultiplied_and_composited_on_white() -> None:
    # left half opaque red; right half transparent with black colour values: a decoder that
    # scaled the colour without the alpha would bleed black into the red edge
    rgba = np.zeros((400, 600, 4), np.uint8)
    rgba[:, :300] = (220, 30, 30, 255)
    data = _webp(Image.fromarray(rgba, "RGBA"), lossless=True)
    assert webp.features(data)[2] is True
    out = np.asarray(_output(data).convert("RGB"), dtype=np.int32)  # 336 x 224
    assert out.shape == (224, 336, 3)
    assert np.abs(out[:, :150] - (220, 30, 30)).max() <= 6
    assert out[:, 180:].min() >= 248  # transparent → white
    edge = out[:, 160:176]  # red fading into white: never darker than either
    assert edge.sum(axis=2).min() >= (220 + 30 + 30) - 10


def test_animated_webp_goes_to_pillow_and_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (300, 300), colour) for colour in ((0, 0, 255), (255, 0, 0))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100,
                   lossless=True)
    data = out.getvalue()
    assert webp.needs_pillow(data)
    pixel = _output(data).convert("RGB").getpixel((100, 100))
    assert pixel[2] > 200 and pixel[0] < 40  # blue, the first frame


def test_webp_exif_orientation_goes_to_pillow_and_is_applied() -> None:
    img = Image.new("RGB", (400, 300), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 200, 300))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90° clockwise
    data = _webp(img, quality=95, exif=exif.tobytes())
    assert webp.needs_pillow(data)
    result = resize.process_image(data, CONFIG)
    assert (result.original_width, result.original_height) == (300, 400)
    shown = Image.open(io.BytesIO(result.data)).convert("RGB")
    assert shown.size == (224, 299)
    top, bottom = shown.getpixel((112, 20)), shown.getpixel((112, 280))
    assert top[2] > 200 and bottom[0] > 200  # the blue left half is now on top


def test_broken_and_oversized_webps_are_row_errors() -> None:
    data = _webp(photo_like(640, 480, seed=5), quality=90)
    with pytest.raises(RowError, match="decode_error: WebP data: not enough data"):
        resize.process_image(data[: len(data) // 2], CONFIG)
    with pytest.raises(RowError, match="decode_error: WebP headers"):
        resize.process_image(data[:20] + b"\0" * 40, CONFIG)
    small = DownloadConfig(image_size=224, max_image_pixels=640 * 480 - 1)
    with pytest.raises(RowError, match="decompression_bomb: 640x480 passes"):
        resize.process_image(data, small)
    tiny = DownloadConfig(image_size=224, min_image_size=500)
    with pytest.raises(RowError, match="too_small: 640x480"):
        resize.process_image(data, tiny)


def test_without_a_usable_libwebp_pillow_decodes_webp(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _webp(photo_like(640, 480, seed=6), quality=90)
    monkeypatch.setattr(webp, "_candidates", lambda: ["/nonexistent/libwebp.so"])
    webp._library.cache_clear()
    try:
        assert not webp.available()
        result = resize.process_image(data, CONFIG)
    finally:
        webp._library.cache_clear()
    assert (result.width, result.height) == (299, 224)
    assert (result.original_width, result.original_height) == (640, 480)
