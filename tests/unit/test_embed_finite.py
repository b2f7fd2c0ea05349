"""Non-finite embeddings never reach the index: a real fp16 overflow (tiny-clip, its first
convolution scaled 100,000x, CPU autocast fp16) turns the embeddings of white and photo-like
images into NaN, while mid-grey ones (CLIP's mean: ~0 once normalised) stay finite; the step
writes the overflowed rows as failed_to_embed with the reason, counts them, and keeps the
finite ones in the same batch. fp32 embeds them all."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pyarrow as pa
import torch

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.models import load_model
from clip_index.embed.sinks import NON_FINITE, fail_non_finite
from clip_index.embed.step import embed_shards
from tests.support.images import encoded, image_bytes, photo_like
from tests.support.shards import mark_complete


def _shard(path: str) -> None:
    images = [image_bytes(80, 60, (123, 117, 104)), encoded(photo_like(80, 60, seed=1)),
              image_bytes(70, 64, (250, 250, 250)), image_bytes(90, 60, (123, 117, 104))]
    rows = [{"uid": f"u{i}", "url": f"http://x/{i}", "caption": None, "status": "success",
             "error": None, "image": data, "width": 1, "height": 1, "original_width": 1,
             "original_height": 1, "sha256": "x"} for i, data in enumerate(images)]
    io.write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA))
    mark_complete(path)


def _embed(tmp_path, precision: str) -> tuple[dict[str, dict], int]:
    _shard(str(tmp_path / "images" / io.shard_name(0)))
    shared = load_model("tiny-clip", "none", "cpu", seed=0)  # cached: other tests use it
    clip = dataclasses.replace(shared, model=copy.deepcopy(shared.model))
    with torch.no_grad():
        clip.model.visual.conv1.weight.mul_(1e5)
    config = EmbedConfig(model="tiny-clip", pretrained="none", batch_size=4, num_workers=0,
                         device="cpu", precision=precision)
    out = tmp_path / f"emb-{precision}"
    stats = embed_shards([(0, str(tmp_path / "images" / io.shard_name(0)))], str(out), clip,
                         config)[0]
    rows = {r["uid"]: r for r in io.read_parquet(str(out / io.shard_name(0))).to_pylist()}
    return rows, stats.successes


def test_fp16_overflow_rows_fail_with_the_reason(tmp_path) -> None:
    rows, successes = _embed(tmp_path, "fp16")
    assert len(rows) == 4 and successes == 2
    for uid in ("u1", "u2"):  # photo-like, white: overflowed
        assert rows[uid]["status"] == "failed_to_embed" and rows[uid]["error"] == NON_FINITE
        assert rows[uid]["embedding"] is None
    for uid in ("u0", "u3"):  # grey
        assert rows[uid]["status"] == "success" and np.isfinite(rows[uid]["embedding"]).all()
    fp32, all_ok = _embed(tmp_path, "fp32")
    assert all_ok == 4 and all(np.isfinite(r["embedding"]).all() for r in fp32.values())


def test_only_the_non_finite_rows_of_a_batch_fail() -> None:
    batch = {"good": [{"uid": f"u{i}", "status": "success", "error": None} for i in range(4)],
             "bad": [{"uid": "broken", "status": "failed_to_decode", "error": "x"}]}
    vectors = np.eye(4, 3, dtype=np.float32)
    vectors[1, 2], vectors[3, 0] = np.nan, np.inf
    kept = fail_non_finite(batch, vectors)
    assert [r["uid"] for r in batch["good"]] == ["u0", "u2"]
    np.testing.assert_array_equal(kept, vectors[[0, 2]])
    assert [(r["uid"], r["status"]) for r in batch["bad"]] == [
        ("broken", "failed_to_decode"), ("u1", "failed_to_embed"), ("u3", "failed_to_embed")]
