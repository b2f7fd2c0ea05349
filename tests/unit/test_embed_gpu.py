"""On a GPU (`make gpu-check` runs these; elsewhere they skip, and a `-m gpu` session without a
GPU stops, see tests/conftest.py): the embed step with the JPEGs decoded on the device (nvJPEG,
on the prefetch thread's side stream) gives every row the embedding of its own image, as the
Pillow path does; bf16 and fp16 autocast give finite embeddings close to fp32.

The corpus is 1,024 distinct photo-like JPEGs in 16 batches, so that decodes of batch k+1
overlap the forward pass of batch k: where the decoder wrote into memory still being read
(pytorch/vision#9606), rows came out as another image's or as noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.step import run_embed
from tests.support.images import encoded, photo_like
from tests.support.shards import mark_complete

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MODEL = "ViT-B-32"
ROWS = 1024
# the download step's keep_ratio 256 output for common aspect ratios
SHAPES = [(341, 256), (256, 341), (384, 256), (256, 256), (455, 256)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-corpus")
    rows = []
    for i in range(ROWS):
        w, h = SHAPES[i % len(SHAPES)]
        rows.append({"uid": f"u{i:04d}", "url": f"http://x/{i}", "caption": None,
                     "status": "success", "error": None,
                     "image": encoded(photo_like(w, h, seed=1000 + i), quality=95),
                     "width": w, "height": h, "original_width": w, "original_height": h,
                     "sha256": "x"})
    path = folder / io.shard_name(0)
    io.write_parquet_atomic(str(path), pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA))
    mark_complete(str(path))
    return folder


def _embed(images: Path, out: Path, **settings: object) -> dict[str, np.ndarray]:
    config = EmbedConfig(model=MODEL, pretrained="none", device="cuda", batch_size=64,
                         **settings)  # type: ignore[arg-type]
    result = run_embed([str(images)], [0], str(out), config)
    assert result.shards[0].successes == ROWS, result.shards[0].statuses
    rows = io.read_parquet(str(out / io.shard_name(0))).to_pylist()
    return {r["uid"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def test_device_decode_rows_equal_cpu_decode_rows(images, tmp_path) -> None:
    """Every row: cosine >= 0.99 with the Pillow-decoded embedding of the same uid, and that
    uid is its nearest Pillow-decoded row (none swapped with another image's)."""
    device = _embed(images, tmp_path / "device", decode="device")
    cpu = _embed(images, tmp_path / "cpu", decode="cpu")
    uids = sorted(cpu)
    a = np.stack([device[u] for u in uids])
    b = np.stack([cpu[u] for u in uids])
    own = (a * b).sum(axis=1)
    worst = int(own.argmin())
    assert own.min() >= 0.99, f"{uids[worst]}: cosine {own[worst]:.4f} (device vs CPU decode)"
    nearest = (a @ b.T).argmax(axis=1)
    swapped = [uids[i] for i in np.flatnonzero(nearest != np.arange(len(uids)))]
    assert not swapped, f"{len(swapped)} rows nearer another image's embedding: {swapped[:10]}"


@pytest.fixture(scope="module")
def fp32(images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    return _embed(images, tmp_path_factory.mktemp("fp32"), precision="fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_embeddings_are_finite_and_close_to_fp32(images, fp32, tmp_path,
                                                                precision) -> None:
    """No row fails as non-finite (the step would record it failed_to_embed, and `_embed`
    requires every row to succeed), and each is within cosine 0.99 of fp32 on the same GPU."""
    half = _embed(images, tmp_path / precision, precision=precision)
    for uid, vector in half.items():
        assert np.isfinite(vector).all(), uid
        assert float(vector @ fp32[uid]) >= 0.99, uid
