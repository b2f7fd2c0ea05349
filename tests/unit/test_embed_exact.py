"""Exactness with a real open_clip architecture (ViT-B-32, seeded random weights, its real
preprocess and tokenizer): the download resize does not change what CLIP sees, autocast stays
within cosine 0.999 of fp32, query text embeddings come from the same model and tokenizer."""

from __future__ import annotations

import io as _io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clip_index import io, schema
from clip_index.config import DownloadConfig, EmbedConfig
from clip_index.download.step import download_shard
from clip_index.embed.models import ClipModel, load_model
from clip_index.embed.step import run_embed
from clip_index.vectors import normalise
from tests.support.images import encoded, photo_like
from tests.support.shards import mark_complete

MODEL = "ViT-B-32"
# landscape, portrait, square: 1024 px originals with photo-like detail
SIZES = [(1024, 768), (768, 1024), (1024, 1024)]


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_model(MODEL, "none", "cpu", seed=0)


@pytest.fixture(scope="module")
def originals() -> list[bytes]:
    return [encoded(photo_like(w, h, seed=10 + i), quality=90) for i, (w, h) in enumerate(SIZES)]


def _reference(clip: ClipModel, data: bytes) -> np.ndarray:
    """open_clip's own embedding of an image file: its preprocess, encode_image, normalised."""
    pixels = clip.preprocess(Image.open(_io.BytesIO(data)).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return normalise(clip.model.encode_image(pixels).numpy())[0]


def _download_and_embed(tmp_path, http_server, originals: list[bytes], resize_mode: str,
                        precision: str = "fp32") -> dict[str, np.ndarray]:
    """The real steps: URLs on a 127.0.0.1 server → download (resize) → embed; uid → vector."""
    urls = [http_server.add_bytes(f"/{resize_mode}/{i}.jpg", data)
            for i, data in enumerate(originals)]
    url_file = str(tmp_path / "urls.parquet")
    io.write_parquet_atomic(url_file, pa.Table.from_pylist(
        [{"uid": f"u{i}", "url": u, "caption": None} for i, u in enumerate(urls)],
        schema=schema.URLS_SCHEMA))
    images = tmp_path / f"images-{resize_mode}"
    config = DownloadConfig(resize_mode=resize_mode, allow_private_networks=True,
                            decode_workers=1)
    stats = download_shard(url_file, str(images / io.shard_name(0)), config)
    assert stats.successes == len(originals)
    mark_complete(str(images / io.shard_name(0)))
    out = tmp_path / f"emb-{resize_mode}-{precision}"
    run_embed([str(images)], [0], str(out), EmbedConfig(
        model=MODEL, pretrained="none", device="cpu", precision=precision, num_workers=0))
    rows = io.read_parquet(str(out / io.shard_name(0))).to_pylist()
    return {r["uid"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def test_download_resize_keeps_what_clip_sees(tmp_path, http_server, clip, originals) -> None:
    """Default download (256 px keep_ratio, JPEG q95), then the embed step: cosine >= 0.99
    with open_clip's embedding of the original 1024 px file. The same check fails for the
    'border' resize of the non-square images (padding changes what CLIP sees,
    clip-retrieval#264), so the threshold does discriminate."""
    assert DownloadConfig().resize_mode == "keep_ratio" and DownloadConfig().image_size == 256
    reference = {f"u{i}": _reference(clip, data) for i, data in enumerate(originals)}
    kept = _download_and_embed(tmp_path, http_server, originals, "keep_ratio")
    for uid, ref in reference.items():
        assert float(kept[uid] @ ref) >= 0.99, uid
    padded = _download_and_embed(tmp_path, http_server, originals, "border")
    for uid in ("u0", "u1"):  # the non-square ones
        assert float(padded[uid] @ reference[uid]) < 0.99, uid
    # and different images are far apart: the model is not blind to content
    assert float(reference["u0"] @ reference["u1"]) < 0.95


def test_embed_precision_bf16_on_cpu_is_close_to_fp32(tmp_path, http_server, originals) -> None:
    """precision='bf16' reaches the forward pass (the results differ from fp32) and stays within
    cosine 0.999 of it: the autocast path that CUDA runs by default, exercised on the CPU."""
    fp32 = _download_and_embed(tmp_path, http_server, originals, "keep_ratio", "fp32")
    bf16 = _download_and_embed(tmp_path, http_server, originals, "keep_ratio", "bf16")
    for uid in fp32:
        assert not np.array_equal(fp32[uid], bf16[uid])
        assert float(fp32[uid] @ bf16[uid]) >= 0.999, uid


def test_query_text_uses_the_same_model_and_tokenizer(clip) -> None:
    import open_clip

    queries = ["a red circle", "a photo of a dog on a beach", "x" * 500]  # the last is truncated
    got = clip.encode_text(queries)
    tokens = open_clip.get_tokenizer(MODEL)(queries)
    assert tokens.shape == (3, 77)
    with torch.no_grad():
        ref = normalise(clip.model.encode_text(tokens).numpy())
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got.shape == (3, clip.dim) and clip.dim == 512


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_is_within_0999_of_cpu_fp32(tmp_path, originals) -> None:
    """On a GPU the embed step runs under bf16 autocast by default (over every visible GPU):
    cosine >= 0.999 with open_clip's fp32 embedding on the CPU, same weights."""
    cpu = load_model(MODEL, "none", "cpu", seed=0)
    rows = [{"uid": f"u{i}", "url": f"http://x/{i}", "caption": None, "status": "success",
             "error": None, "image": data, "width": 1, "height": 1, "original_width": 1,
             "original_height": 1, "sha256": "x"} for i, data in enumerate(originals * 200)]
    io.write_parquet_atomic(str(tmp_path / "images" / io.shard_name(0)),
                            pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA))
    mark_complete(str(tmp_path / "images" / io.shard_name(0)))
    config = EmbedConfig(model=MODEL, pretrained="none", device="cuda")
    result = run_embed([str(tmp_path / "images")], [0], str(tmp_path / "emb"), config)
    assert result.shards[0].successes == len(rows)
    out = io.read_parquet(str(tmp_path / "emb" / io.shard_name(0))).to_pylist()
    reference = {f"u{i}": _reference(cpu, originals[i % len(originals)]) for i in range(len(rows))}
    for row in out:
        assert float(np.asarray(row["embedding"]) @ reference[row["uid"]]) >= 0.999, row["uid"]
