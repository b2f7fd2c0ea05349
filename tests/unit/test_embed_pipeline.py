"""The embed pipeline with the CPU as the device: the device decoder matches open_clip's own
preprocessing, one loader serves all the shards of a unit, the prefetcher overlaps and hands
errors back, several processes split a unit (as one per GPU does) with the same output."""

from __future__ import annotations

import io as _io
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.decoder import DeviceResize, decode_jpegs
from clip_index.embed.loader import Prefetcher
from clip_index.embed.models import load_model
from clip_index.embed.pixels import split_preprocess
from clip_index.embed.step import run_embed
from clip_index.vectors import normalise
from tests.support.images import encoded, photo_like
from tests.support.shards import mark_complete

CONFIG = EmbedConfig(model="tiny-clip", pretrained="none", batch_size=4, num_workers=0,
                     device="cpu")
# the download step's keep_ratio 256 output for common aspect ratios, plus odd ones
SHAPES = [(341, 256), (256, 341), (384, 256), (455, 256), (256, 256), (97, 60), (1000, 256)]


def _jpeg(w: int, h: int, seed: int) -> bytes:
    return encoded(photo_like(w, h, seed=seed), quality=95)


def test_device_decoder_matches_open_clips_pixels() -> None:
    """The device decoder's code path run on the CPU (torchvision's libjpeg-turbo decode and
    its CPU uint8 resize kernels) against open_clip's Pillow path on the stored JPEGs: at most
    1 uint8 level apart, mean < 0.01. A CPU figure: CUDA runs nvJPEG and a float interpolate,
    bounded by the `gpu` tests (below, and tests/unit/test_embed_gpu.py)."""
    import open_clip

    split = split_preprocess(open_clip.image_transform(224, is_train=False))
    assert split is not None
    resize = DeviceResize.from_preprocess(split.pil_transforms)
    assert resize == DeviceResize(224, (224, 224))
    datas = [_jpeg(w, h, i) for i, (w, h) in enumerate(SHAPES)]
    decoded = decode_jpegs([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas],
                           "cpu")
    for data, image in zip(datas, decoded):
        want = split.pil_stage(Image.open(_io.BytesIO(data)).convert("RGB"))
        got = resize(image)
        diff = (got.int() - want.int()).abs()
        assert got.shape == want.shape and got.dtype == torch.uint8
        assert diff.max() <= 1 and diff.float().mean() < 0.01
    # a model whose preprocess is not resize+crop keeps the CPU path
    assert DeviceResize.from_preprocess((lambda img: img,)) is None


def test_bad_bytes_in_a_batch_fail_alone() -> None:
    good = torch.frombuffer(bytearray(_jpeg(64, 48, 1)), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff not really"), dtype=torch.uint8)
    out = decode_jpegs([good, bad, good], "cpu")
    assert out[1] is None and out[0].shape == (3, 48, 64) and torch.equal(out[0], out[2])


def _shard(path: str, seed: int, extra: list[dict] | None = None) -> list[dict]:
    rows = [{"uid": f"s{seed}-{i}", "url": f"http://x/{seed}/{i}", "caption": None,
             "status": "success", "error": None, "image": _jpeg(w, h, seed * 100 + i),
             "width": w, "height": h, "original_width": w, "original_height": h, "sha256": "x"}
            for i, (w, h) in enumerate(SHAPES)]
    rows += extra or []
    io.write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA))
    mark_complete(path)
    return rows


def _png(w: int, h: int) -> bytes:
    buf = _io.BytesIO()
    photo_like(w, h, seed=5).save(buf, "PNG")
    return buf.getvalue()


def _unit(tmp_path, shards=(0, 1, 2)) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    for s in shards:
        extra = [{"uid": f"s{s}-png", "url": "http://x/p", "caption": None, "status": "success",
                  "error": None, "image": _png(300, 256), "width": 1, "height": 1,
                  "original_width": 1, "original_height": 1, "sha256": "x"},
                 {"uid": f"s{s}-broken", "url": "http://x/b", "caption": None,
                  "status": "success", "error": None, "image": b"\xff\xd8\xff broken",
                  "width": 1, "height": 1, "original_width": 1, "original_height": 1,
                  "sha256": "x"},
                 {"uid": f"s{s}-gone", "url": "http://x/g", "caption": None,
                  "status": "failed_to_download", "error": "http_404: x", "image": None,
                  "width": None, "height": None, "original_width": None,
                  "original_height": None, "sha256": None}]
        folder = tmp_path / f"images-{s % 2}"  # shards spread over two download folders
        for row in _shard(str(folder / io.shard_name(s)), s, extra):
            images[row["uid"]] = row["image"]
    return images


def _rows(out_dir, shard: int) -> dict[str, dict]:
    return {r["uid"]: r for r in io.read_parquet(str(out_dir / io.shard_name(shard))).to_pylist()}


def test_device_decode_unit_equals_open_clip(tmp_path) -> None:
    """decode='device' on the CPU, 2 workers, three shards in one loader: every row has its
    status; JPEG and PNG embeddings within cosine 0.999 of open_clip's own; the broken JPEG
    is failed_to_decode in its shard; each shard has its stats file."""
    images = _unit(tmp_path)
    config = EmbedConfig(**{**CONFIG.as_dict(), "decode": "device", "num_workers": 2})
    folders = [str(tmp_path / "images-0"), str(tmp_path / "images-1")]
    result = run_embed(folders, [0, 1, 2], str(tmp_path / "emb"), config)
    assert [s.shard for s in result.shards] == [0, 1, 2]
    clip = load_model("tiny-clip", "none", "cpu")
    for shard in (0, 1, 2):
        rows = _rows(tmp_path / "emb", shard)
        assert len(rows) == len(SHAPES) + 3
        assert rows[f"s{shard}-gone"]["status"] == "failed_to_download"
        assert rows[f"s{shard}-broken"]["status"] == "failed_to_decode"
        assert rows[f"s{shard}-broken"]["embedding"] is None
        assert io.exists(str(tmp_path / "emb" / io.stats_name(shard)))
        for uid, row in rows.items():
            if row["status"] != "success":
                continue
            pixels = clip.preprocess(Image.open(_io.BytesIO(images[uid])).convert("RGB"))
            with torch.no_grad():
                ref = normalise(clip.model.encode_image(pixels[None]).numpy())[0]
            assert float(np.asarray(row["embedding"]) @ ref) >= 0.999, uid
    assert sum(s.successes for s in result.shards) == 3 * (len(SHAPES) + 1)


def test_one_process_per_device_splits_the_unit(tmp_path, monkeypatch) -> None:
    """Two embedding processes (as two GPUs get), the CPU as their device: the shards are shared
    between them and the output equals one process's."""
    from clip_index.embed import step

    _unit(tmp_path, shards=(0, 1, 2))
    folders = [str(tmp_path / "images-0"), str(tmp_path / "images-1")]
    one = run_embed(folders, [0, 1, 2], str(tmp_path / "one"), CONFIG)
    monkeypatch.setattr(step, "embedding_processes", lambda device, shards: 2)
    two = run_embed(folders, [0, 1, 2], str(tmp_path / "two"), CONFIG)
    assert [s.as_dict()["statuses"] for s in one.shards] == \
        [s.as_dict()["statuses"] for s in two.shards]
    assert two.extra == one.extra
    for shard in (0, 1, 2):
        a, b = _rows(tmp_path / "one", shard), _rows(tmp_path / "two", shard)
        assert a.keys() == b.keys()
        for uid in a:
            if a[uid]["embedding"] is not None:
                np.testing.assert_allclose(a[uid]["embedding"], b[uid]["embedding"], atol=1e-6)


def test_multi_process_errors_are_raised(tmp_path, monkeypatch) -> None:
    from clip_index.embed import step

    _unit(tmp_path, shards=(0, 1))
    monkeypatch.setattr(step, "embedding_processes", lambda device, shards: 2)
    garbage = tmp_path / "weights.bin"  # a file, but no checkpoint: the children fail loading
    garbage.write_bytes(b"not a checkpoint")
    bad = EmbedConfig(**{**CONFIG.as_dict(), "pretrained": str(garbage)})
    with pytest.raises(Exception, match="process [01]"):
        run_embed([str(tmp_path / "images-0"), str(tmp_path / "images-1")], [0, 1],
                  str(tmp_path / "emb"), bad)
    assert not (tmp_path / "emb" / io.stats_name(0)).exists()


def test_prefetcher_runs_ahead_in_order_and_hands_back_errors() -> None:
    """Batches are prepared on another thread while the consumer works (overlap), come back in
    order, and an error in preparing is raised in the consumer."""
    threads: list[str] = []

    def prepare(batch: dict) -> dict:
        threads.append(threading.current_thread().name)
        time.sleep(0.02)
        return {**batch, "pixels": None}

    batches = [{"n": i} for i in range(6)]
    start = time.monotonic()
    got = []
    for batch in Prefetcher(batches, prepare, "cpu", depth=2):
        time.sleep(0.02)  # the "forward pass"
        got.append(batch["n"])
    elapsed = time.monotonic() - start
    assert got == list(range(6)) and set(threads) == {"embed-prefetch"}
    assert elapsed < 6 * 0.04 * 0.85  # overlapped, not prepare + forward one after another

    def failing(batch: dict) -> dict:
        if batch["n"] == 3:
            raise ValueError("bad batch 3")
        return batch

    seen = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for batch in Prefetcher(batches, failing, "cpu"):
            seen.append(batch["n"])
    assert seen == [0, 1, 2]


def test_half_precision_normalisation_is_one_fused_pass_close_to_fp32() -> None:
    import open_clip

    split = split_preprocess(open_clip.image_transform(224, is_train=False))
    assert split is not None
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    exact = split.tensor_stage(pixels)
    for dtype in (torch.bfloat16, torch.float16):
        half = split.tensor_stage(pixels, dtype)
        assert half.dtype == dtype
        torch.testing.assert_close(half.float(), exact, atol=0.02, rtol=0.01)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvjpeg_decode_matches_open_clip_on_cuda() -> None:
    """nvJPEG + the CUDA resize against open_clip's Pillow path: within 2 uint8 levels at most
    (nvJPEG's IDCT may differ from libjpeg-turbo's by a level), mean < 0.05."""
    import open_clip

    split = split_preprocess(open_clip.image_transform(224, is_train=False))
    assert split is not None
    resize = DeviceResize.from_preprocess(split.pil_transforms)
    assert resize is not None
    datas = [_jpeg(w, h, i) for i, (w, h) in enumerate(SHAPES)]
    decoded = decode_jpegs([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas],
                           "cuda")
    for data, image in zip(datas, decoded):
        want = split.pil_stage(Image.open(_io.BytesIO(data)).convert("RGB"))
        diff = (resize(image).cpu().int() - want.int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.05


def test_cuda_decode_waits_for_the_callers_stream_first(monkeypatch) -> None:
    """The order that keeps nvJPEG from overwriting memory the caller's stream still reads
    (pytorch/vision#9606): the wait, then the decode. Recorded here with both replaced (no GPU
    in this test); tests/unit/test_embed_gpu.py checks the result on a GPU."""
    import torchvision.io

    from clip_index.embed import decoder

    calls: list[str] = []
    monkeypatch.setattr(decoder, "wait_for_current_stream", lambda: calls.append("wait"))
    monkeypatch.setattr(torchvision.io, "decode_jpeg",
                        lambda datas, mode, device: calls.append(f"decode {device}") or datas)
    decode_jpegs([torch.zeros(4, dtype=torch.uint8)], "cuda")
    decode_jpegs([torch.zeros(4, dtype=torch.uint8)], "cpu")
    assert calls == ["wait", "decode cuda", "decode cpu"]
