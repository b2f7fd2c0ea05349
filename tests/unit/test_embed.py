"""Embed step: every row leaves with a status; embeddings equal open_clip's own, normalised."""

import io as _io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed import run_embed
from clip_index.models import load_model
from tests.conftest import jpeg_bytes

CONFIG = EmbedConfig(model="tiny-clip", pretrained="none", batch_size=4, num_workers=0)


def _image_shard(path: str) -> list[bytes]:
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20), (90, 20, 160)]
    images = [jpeg_bytes(80 + 10 * i, 60, c) for i, c in enumerate(colours)]
    rows = [{"uid": f"u{i}", "url": f"http://x/{i}.jpg", "caption": f"c{i}", "status": "success",
             "error": None, "image": img, "width": 1, "height": 1, "original_width": 1,
             "original_height": 1, "sha256": "x"} for i, img in enumerate(images)]
    rows.append({**rows[0], "uid": "broken", "image": b"\xff\xd8 not a jpeg"})
    rows.append({**rows[0], "uid": "gone", "status": "failed_to_download", "error": "http_404: x",
                 "image": None})
    io.write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA))
    return images


def test_every_row_has_a_status_and_embeddings_match_open_clip(tmp_path) -> None:
    images = _image_shard(str(tmp_path / "images" / io.shard_name(0)))
    result = run_embed(str(tmp_path / "images"), 0, str(tmp_path / "emb"), CONFIG)
    out = io.read_parquet(str(tmp_path / "emb" / io.shard_name(0)))
    by_uid = {r["uid"]: r for r in out.to_pylist()}
    assert set(by_uid) == {"u0", "u1", "u2", "u3", "u4", "broken", "gone"}
    assert by_uid["gone"]["status"] == "failed_to_download"
    assert by_uid["gone"]["error"] == "http_404: x"
    assert by_uid["broken"]["status"] == "failed_to_decode"
    assert by_uid["broken"]["embedding"] is None
    assert result.stats.successes == 5 and result.stats.rows == 7
    assert result.model == {"model": "tiny-clip", "pretrained": "none", "dim": 64, "seed": 0,
                            "dtype": "float32", "normalised": True}
    clip = load_model("tiny-clip", "none")
    for i, data in enumerate(images):
        pixels = clip.preprocess(Image.open(_io.BytesIO(data)).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            ref = clip.model.encode_image(pixels)[0].numpy()
        ref = ref / np.linalg.norm(ref)
        got = np.asarray(by_uid[f"u{i}"]["embedding"], dtype=np.float32)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_finished_shard_is_skipped_and_float16_storage(tmp_path) -> None:
    _image_shard(str(tmp_path / "images" / io.shard_name(3)))
    half = EmbedConfig(**{**CONFIG.as_dict(), "dtype": "float16"})
    first = run_embed(str(tmp_path / "images"), 3, str(tmp_path / "emb"), half)
    out = io.read_parquet(str(tmp_path / "emb" / io.shard_name(3)))
    assert out.schema.field("embedding").type.value_type == pa.float16()
    again = run_embed(str(tmp_path / "images"), 3, str(tmp_path / "emb"), half)
    assert not first.stats.skipped and again.stats.skipped
    assert again.stats.successes == first.stats.successes


def test_random_weights_are_reproducible_from_the_seed() -> None:
    from clip_index.models import _load

    a = _load("tiny-clip", "none", "cpu", 7)
    _load.cache_clear()
    b = _load("tiny-clip", "none", "cpu", 7)
    for pa_, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa_, pb)


def test_unknown_model_and_pretrained_are_named() -> None:
    from clip_index.models import check_model_name, check_pretrained

    with pytest.raises(ValueError, match=r"ViT-B-31.*closest known names.*ViT-B-32"):
        check_model_name("ViT-B-31")
    with pytest.raises(ValueError, match="not a file nor a pretrained tag"):
        check_pretrained("ViT-B-32", "laion9000")
