"""Resize quality check: does each downloader's output look like a proper resize of the original?

For a sample of images that every tool downloaded, each output image is compared with a
reference made by Pillow from the original file: the same geometry (resize to the output's size
for keep_ratio; shorter side to the output's side and a centre crop for center_crop; longer side
and centred padding for border) with LANCZOS. The mean PSNR per tool is reported, with a
calibration row (Pillow BICUBIC against Pillow LANCZOS at the same sizes) to show how much two
honest resampling filters already differ. Sources with an alpha channel are left out (the tools
choose different backgrounds by design).

Run alone: ``python -m bench.download.quality --corpus DIR --urls URLS.parquet
--img2dataset OUT1 --clip-index OUT2 [--mode keep_ratio]``.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

logger = logging.getLogger(__name__)

CALIBRATION = "Pillow BICUBIC (calibration)"


@dataclass(frozen=True)
class QualityResult:
    """PSNR of one tool's outputs against the Pillow references."""

    tool: str
    compared: int
    mean_psnr_db: float
    min_psnr_db: float
    upscaled: int  # outputs larger than their original (keep_ratio: small images blown up)
    size_mismatch: int  # outputs whose size is not what the mode asks for
    inspected: int = 0  # sampled sources looked at (compared + skipped for a size difference)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def read_outputs(out_dir: Path) -> dict[str, bytes]:
    """url -> encoded image bytes of every successful row in the parquet files under ``out_dir``.

    Understands img2dataset's parquet (``jpg``/``png``/``webp`` column) and clip-index's
    (``image`` column, ``status``).
    """
    images: dict[str, bytes] = {}
    for path in sorted(out_dir.rglob("*.parquet")):
        names = pq.read_schema(path).names
        col = next((c for c in ("image", "jpg", "png", "webp") if c in names), None)
        if col is None or "url" not in names:
            continue
        cols = ["url", col] + (["status"] if "status" in names else [])
        data = pq.read_table(path, columns=cols).to_pydict()
        statuses = data.get("status", [None] * len(data["url"]))
        for url, blob, status in zip(data["url"], data[col], statuses, strict=True):
            if blob and status in (None, "success"):
                images[url] = blob
    return images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of the same shape (99 if equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def reference(src: Image.Image, size: tuple[int, int], mode: str,
              resample: Image.Resampling, pad: tuple[float, ...] = (0, 0, 0)) -> Image.Image:
    """The Pillow version of resizing ``src`` (RGB) to an output of ``size`` in ``mode``."""
    w, h = size
    sw, sh = src.size
    if mode == "center_crop":
        scale = max(w / sw, h / sh)
        rw, rh = max(w, round(sw * scale)), max(h, round(sh * scale))
        resized = src.resize((rw, rh), resample)
        left, top = (rw - w) // 2, (rh - h) // 2
        return resized.crop((left, top, left + w, top + h))
    if mode == "border":
        scale = min(w / sw, h / sh)
        rw, rh = max(1, round(sw * scale)), max(1, round(sh * scale))
        canvas = Image.new("RGB", (w, h), tuple(int(v) for v in pad))
        canvas.paste(src.resize((rw, rh), resample), ((w - rw) // 2, (h - rh) // 2))
        return canvas
    return src.resize((w, h), resample)  # keep_ratio / no: same size as the output


def _expected_ok(out: tuple[int, int], orig: tuple[int, int], mode: str, image_size: int) -> bool:
    """Whether an output size is what ``mode`` asks for (with or without upscaling)."""
    w, h = out
    if mode == "keep_ratio":
        short = min(w, h)
        ratio_ok = abs(w / h - orig[0] / orig[1]) <= 0.02 * (orig[0] / orig[1]) + 2 / min(w, h)
        return ratio_ok and (short == image_size or (short == min(orig) and short < image_size))
    if mode in ("center_crop", "border"):
        return (w, h) == (image_size, image_size) or max(w, h) <= image_size
    return True


def compare(corpus_root: Path, url_to_relpath: dict[str, str], outputs: dict[str, dict[str, bytes]],
            mode: str, image_size: int, sample: int = 200, seed: int = 0) -> list[QualityResult]:
    """PSNR of every tool's output vs a Pillow LANCZOS reference, on ``sample`` shared images."""
    common = sorted(set.intersection(*(set(o) for o in outputs.values()))) if outputs else []
    random.Random(seed).shuffle(common)
    per_tool: dict[str, list[float]] = {name: [] for name in outputs}
    calib: list[float] = []
    upscaled = dict.fromkeys(outputs, 0)
    mismatch = dict.fromkeys(outputs, 0)
    inspected = 0
    for url in common:
        if len(calib) >= sample:
            break
        with Image.open(corpus_root / url_to_relpath[url]) as original:
            if _has_alpha(original):
                continue
            src = original.convert("RGB")
        inspected += 1
        outs = {name: Image.open(io.BytesIO(images[url])).convert("RGB")
                for name, images in outputs.items()}
        for name, out in outs.items():
            upscaled[name] += int(out.size[0] * out.size[1] > src.size[0] * src.size[1])
            mismatch[name] += int(not _expected_ok(out.size, src.size, mode, image_size))
        sizes = {out.size for out in outs.values()}
        if len(sizes) > 1:
            continue  # e.g. one tool upscaled a small image: PSNRs at different sizes don't compare
        for name, out in outs.items():
            corner = out.getpixel((0, 0))
            pad = corner if mode == "border" and isinstance(corner, tuple) else (0, 0, 0)
            ref = reference(src, out.size, mode, Image.Resampling.LANCZOS, pad[:3])
            per_tool[name].append(psnr(np.asarray(out), np.asarray(ref)))
        size = sizes.pop()
        lanczos = reference(src, size, mode, Image.Resampling.LANCZOS)
        bicubic = reference(src, size, mode, Image.Resampling.BICUBIC)
        calib.append(psnr(np.asarray(bicubic), np.asarray(lanczos)))
    nan = float("nan")
    results = [
        QualityResult(name, len(v), float(np.mean(v)) if v else nan,
                      float(np.min(v)) if v else nan, upscaled[name], mismatch[name], inspected)
        for name, v in per_tool.items()
    ]
    results.append(QualityResult(CALIBRATION, len(calib), float(np.mean(calib)) if calib else nan,
                                 float(np.min(calib)) if calib else nan, 0, 0, len(calib)))
    for r in results:
        logger.info("quality: %s: %d images, mean PSNR %.1f dB (min %.1f), %d upscaled, "
                    "%d unexpected sizes", r.tool, r.compared, r.mean_psnr_db, r.min_psnr_db,
                    r.upscaled, r.size_mismatch)
    return results


def markdown(results: list[QualityResult], mode: str, image_size: int) -> str:
    """The quality results as a Markdown table."""
    inspected = max((r.inspected for r in results), default=0)
    compared = results[0].compared if results else 0
    lines = [
        f"Resize quality ({mode}, {image_size} px): PSNR of each output vs a Pillow LANCZOS resize "
        f"of the original file to the same size, on {compared} random images that every tool "
        f"returned at the same size ({inspected} inspected; sources with alpha left out). "
        "Upscaled / unexpected size count over the inspected images.",
        "",
        "| output | images | mean PSNR dB | min PSNR dB | upscaled | unexpected size |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.tool} | {r.compared} | {r.mean_psnr_db:.1f} | {r.min_psnr_db:.1f} | "
                     f"{r.upscaled} | {r.size_mismatch} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: compare existing outputs without re-running the downloads."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus root (has img/)")
    parser.add_argument("--urls", type=Path, required=True, help="the URL parquet used")
    parser.add_argument("--img2dataset", type=Path, help="img2dataset output folder")
    parser.add_argument("--clip-index", type=Path, help="clip-index output folder")
    parser.add_argument("--mode", default="keep_ratio")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    urls = pq.read_table(args.urls, columns=["uid", "url"]).to_pydict()
    files = pq.read_table(args.corpus / "files.parquet", columns=["uid", "relpath"]).to_pydict()
    rel = dict(zip(files["uid"], files["relpath"], strict=True))
    url_to_relpath = {u: rel[uid] for uid, u in zip(urls["uid"], urls["url"], strict=True)}
    outputs = {name: read_outputs(path) for name, path in
               (("img2dataset", args.img2dataset), ("clip-index", args.clip_index)) if path}
    print(markdown(compare(args.corpus, url_to_relpath, outputs, args.mode, args.image_size,
                           args.sample), args.mode, args.image_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
