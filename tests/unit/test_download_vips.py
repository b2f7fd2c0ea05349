"""PNGs through libvips (pyvips wheels; every PNG with image_decoder="vips", large ones with
"auto") give the rows the Pillow path gives: the same statuses,
error kinds and sizes, pixels within a tight PSNR, every safety promise kept; libvips runs
bounded (no cache, one thread); where it cannot load the step falls back to Pillow and says so
once."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip_index.config import DownloadConfig
from clip_index.download import resize, vips
from tests.support import images

pytest.importorskip("pyvips")


def _photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.clip(np.stack([x, y, (x + y) / 2], -1) + rng.normal(0, 12, (height, width, 3)),
                  0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        img.putalpha(Image.fromarray(x.astype(np.uint8)))
    elif mode == "LA":
        img = img.convert("L")
        img.putalpha(Image.fromarray(y.astype(np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def _png(img: Image.Image, **kw: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **kw)
    return out.getvalue()


def _apng() -> bytes:
    frames = [Image.new("RGB", (300, 200), c) for c in ((250, 10, 10), (10, 250, 10))]
    out = io.BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


PNGS = {
    "rgb": _png(_photo(900, 600)),
    "rgba": _png(_photo(640, 480, "RGBA")),
    "la": _png(_photo(500, 700, "LA")),
    "grey": _png(_photo(800, 300, "L")),
    "palette": images.palette_png(),
    "palette-transparent": images.palette_png(transparent=True),
    "16-bit": images.png_16bit(),
    "animated": _apng(),
    "tiny": _png(_photo(20, 12)),
    "truncated": _png(_photo(900, 600))[:20_000],
    "garbage-after-header": _png(_photo(900, 600))[:100] + b"\x00garbage" * 500,
    "bomb": images.png_bomb(),
}
CONFIGS = [DownloadConfig(image_size=224),
           DownloadConfig(image_size=128, resize_mode="center_crop"),
           DownloadConfig(image_size=128, resize_mode="border"),
           DownloadConfig(image_size=64, min_image_size=50, max_aspect_ratio=2.5)]


def _psnr(a: bytes, b: bytes) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def _rows(config: DownloadConfig, decoder: str) -> list[Any]:
    import dataclasses

    resize.init_worker(dataclasses.replace(config, image_decoder=decoder))
    return resize.process_batch(list(PNGS.values()))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.resize_mode}-{c.image_size}")
def test_both_paths_give_the_same_rows(config: DownloadConfig) -> None:
    assert vips.available()
    with_vips, with_pillow = _rows(config, "vips"), _rows(config, "pillow")
    for name, a, b in zip(PNGS, with_vips, with_pillow, strict=True):
        if isinstance(b, resize.ProcessedImage):
            assert isinstance(a, resize.ProcessedImage), (name, a)
            assert (a.width, a.height, a.original_width, a.original_height, a.sha256) == (
                b.width, b.height, b.original_width, b.original_height, b.sha256), name
            assert _psnr(a.data, b.data) > 33, name
        else:  # the same status and error kind (the message may name the library)
            assert not isinstance(a, resize.ProcessedImage), (name, a)
            assert a[0] == b[0] and a[1].split(":")[0] == b[1].split(":")[0], (name, a, b)


def test_vips_really_decodes_pngs_and_keeps_the_promises() -> None:
    config = DownloadConfig(image_size=224, image_decoder="vips")
    decoded = resize._decode_vips(PNGS["rgb"], config)
    assert decoded is not None and decoded.image.size == (336, 224)  # straight to the target
    assert resize._decode_vips(images.noisy_jpeg(300, 200), config) is None  # JPEG: Pillow
    # "auto": only large PNGs (the IHDR size decides, before any library call)
    auto = DownloadConfig(image_size=224)
    assert resize._decode_vips(PNGS["rgb"], auto) is None  # 0.54 MP: Pillow
    large = _png(Image.new("RGB", (2500, 1700), (20, 120, 220)))
    decoded = resize._decode_vips(large, auto)
    assert decoded is not None and decoded.image.size == (329, 224)
    # alpha composited on white, never black
    out = resize.process_image(_png(Image.new("RGBA", (400, 400), (0, 0, 0, 0))), config)
    assert Image.open(io.BytesIO(out.data)).convert("RGB").getpixel((5, 5)) >= (250, 250, 250)
    # first frame of an animation (red, not green)
    first = Image.open(io.BytesIO(resize.process_image(PNGS["animated"], config).data))
    r, g, _ = first.convert("RGB").getpixel((10, 10))
    assert r > 200 and g < 60
    # no upscaling
    tiny = resize.process_image(PNGS["tiny"], config)
    assert (tiny.width, tiny.height) == (20, 12)


@pytest.mark.parametrize("decoder", ["auto", "vips"])
def test_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch,
                                                decoder: str) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(vips, "thumbnail", never)
    with pytest.raises(resize.RowError, match="decompression_bomb"):  # 3.6 GP: libvips' header
        resize.process_image(PNGS["bomb"], DownloadConfig(image_decoder=decoder))
    with pytest.raises(resize.RowError, match="decompression_bomb"):
        resize.process_image(PNGS["rgb"], DownloadConfig(max_image_pixels=900 * 600 - 1,
                                                         image_decoder=decoder))


def test_libvips_is_bounded() -> None:
    import pyvips

    assert vips.available()
    assert pyvips.cache_get_max() == 0 and pyvips.concurrency_get() == 1


def test_fallback_to_pillow_is_logged_once(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(vips, "_pyvips", lambda: None)
    monkeypatch.setattr(vips, "_pyvips_error", ["ImportError: no libvips here"])
    vips._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="clip_index.download.vips"):
        assert not vips.warn_if_unavailable()
        assert not vips.warn_if_unavailable()
    assert [r.getMessage() for r in caplog.records].count(
        caplog.records[0].getMessage()) == 1 == len(caplog.records)
    assert "Pillow" in caplog.records[0].getMessage()
    config = DownloadConfig(image_size=224, image_decoder="vips")
    assert resize._decode_vips(PNGS["rgb"], config) is None
    out = resize.process_image(PNGS["rgb"], config)  # decoded by Pillow instead
    assert (out.width, out.height) == (336, 224)
