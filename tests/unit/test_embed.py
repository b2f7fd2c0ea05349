"""Embed step: every row leaves with a status; embeddings equal open_clip's own, normalised."""

import io as _io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clip_index import io, schema
from clip_index.config import EmbedConfig
from clip_index.embed.models import load_model
from clip_index.embed.step import run_embed
from tests.support.images import image_bytes
from tests.support.shards import mark_complete

CONFIG = EmbedConfig(model="tiny-clip", pretrained="none", batch_size=4, num_workers=0)


def _image_shard(path: str) -> list[bytes]:
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20), (90, 20, 160)]
    images = [image_bytes(80 + 10 * i, 60, c) for i, c in enumerate(colours)]
    rows = [{"uid": f"u{i}", "url": f"http://x/{i}.jpg", "caption": f"c{i}", "status": "success",
             "error": None, "image": img, "width": 1, "height": 1, "original_width": 1,
             "original_height": 1, "sha256": "x"} for i, img in enumerate(images)]
    rows.append({**rows[0], "uid": "broken", "image": b"\xff\xd8 not a jpeg"})
    rows.append({**rows[0], "uid": "gone", "status": "failed_to_download", "error": "http_404: x",
                 "image": None})
    io.write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA))
    mark_complete(path)
    return images


def test_every_row_has_a_status_and_embeddings_match_open_clip(tmp_path) -> None:
    images = _image_shard(str(tmp_path / "images" / io.shard_name(0)))
    result = run_embed([str(tmp_path / "images")], [0], str(tmp_path / "emb"), CONFIG)
    out = io.read_parquet(str(tmp_path / "emb" / io.shard_name(0)))
    by_uid = {r["uid"]: r for r in out.to_pylist()}
    assert set(by_uid) == {"u0", "u1", "u2", "u3", "u4", "broken", "gone"}
    assert by_uid["gone"]["status"] == "failed_to_download"
    assert by_uid["gone"]["error"] == "http_404: x"
    assert by_uid["broken"]["status"] == "failed_to_decode"
    assert by_uid["broken"]["embedding"] is None
    assert result.shards[0].successes == 5 and result.shards[0].rows == 7
    assert result.extra == {"model": "tiny-clip", "pretrained": "none", "dim": 64, "seed": 0,
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
    first = run_embed([str(tmp_path / "images")], [3], str(tmp_path / "emb"), half)
    out = io.read_parquet(str(tmp_path / "emb" / io.shard_name(3)))
    assert out.schema.field("embedding").type.value_type == pa.float16()
    again = run_embed([str(tmp_path / "images")], [3], str(tmp_path / "emb"), half)
    assert not first.shards[0].skipped and again.shards[0].skipped
    assert again.shards[0].successes == first.shards[0].successes


def test_random_weights_are_reproducible_from_the_seed() -> None:
    from clip_index.embed.models import _load

    a = _load("tiny-clip", "none", "cpu", 7)
    _load.cache_clear()
    b = _load("tiny-clip", "none", "cpu", 7)
    for pa_, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa_, pb)


def test_unknown_model_and_pretrained_are_named() -> None:
    from clip_index.embed.models import check_model_name, check_pretrained

    with pytest.raises(ValueError, match=r"ViT-B-31.*closest known names.*ViT-B-32"):
        check_model_name("ViT-B-31")
    with pytest.raises(ValueError, match="not a file nor a pretrained tag"):
        check_pretrained("ViT-B-32", "laion9000")


def test_split_preprocess_is_bit_identical_to_open_clips() -> None:
    """Workers run the PIL stage, the device the tensor stage: together exactly `preprocess`."""
    import open_clip

    from clip_index.embed.pixels import split_preprocess
    from tests.support.images import photo_like

    for preprocess in (load_model("tiny-clip", "none").preprocess,
                       open_clip.image_transform(224, is_train=False)):
        split = split_preprocess(preprocess)
        assert split is not None
        for seed, (w, h) in enumerate([(341, 256), (256, 455), (97, 60)]):
            img = photo_like(w, h, seed=seed)
            staged = split.pil_stage(img)
            assert staged.dtype == torch.uint8
            assert torch.equal(split.tensor_stage(staged[None])[0], preprocess(img))
    assert split_preprocess(lambda img: img) is None  # anything else runs whole in the workers


def test_cuda_out_of_memory_halves_the_batch_and_goes_on(tmp_path) -> None:
    """No GPU here: a real tiny-clip ClipModel whose encode raises torch.cuda.OutOfMemoryError
    for batches above 2 images stands in for a GPU that runs out of memory. The step must
    halve the batch (the 5 good rows: 5 → 2), keep that size, embed every row, and give the
    same vectors as without the errors."""
    import dataclasses

    from clip_index.embed.models import ClipModel
    from clip_index.embed.step import embed_shard

    @dataclasses.dataclass
    class OutOfMemoryAbove(ClipModel):
        limit: int = 2
        calls: list[int] = dataclasses.field(default_factory=list)

        def encode_tensor(self, pixels, precision: str = "auto"):
            self.calls.append(len(pixels))
            if len(pixels) > self.limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
            return super().encode_tensor(pixels, precision)

    shard = str(tmp_path / "images" / io.shard_name(0))
    _image_shard(shard)
    base = load_model("tiny-clip", "none")
    small = OutOfMemoryAbove(**{f.name: getattr(base, f.name)
                                for f in dataclasses.fields(ClipModel)})
    config = EmbedConfig(**{**CONFIG.as_dict(), "batch_size": 8})
    stats = embed_shard(shard, str(tmp_path / "small.parquet"), small, config)
    embed_shard(shard, str(tmp_path / "plain.parquet"), base, config)
    assert stats.successes == 5 and stats.rows == 7
    assert small.calls == [5, 2, 2, 1]  # one batch of 5 decodable images, then halves
    got = {r["uid"]: r["embedding"] for r in io.read_parquet(str(tmp_path / "small.parquet"))
           .to_pylist()}
    want = {r["uid"]: r["embedding"] for r in io.read_parquet(str(tmp_path / "plain.parquet"))
            .to_pylist()}
    assert got.keys() == want.keys()
    for uid, vector in want.items():
        if vector is None:
            assert got[uid] is None
        else:
            np.testing.assert_allclose(got[uid], vector, atol=1e-6)


def test_out_of_memory_at_one_image_is_an_error(tmp_path) -> None:
    from clip_index.embed.step import BatchEncoder

    class NeverFits:
        dim = 64

        def encode_tensor(self, pixels, precision: str = "auto"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")

    encoder = BatchEncoder(NeverFits())  # type: ignore[arg-type]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        encoder(torch.zeros(4, 3, 8, 8))
    assert encoder.max_batch == 1


def test_cli_names_the_closest_models_and_how_to_pass_a_checkpoint(tmp_path, capsys,
                                                                    monkeypatch) -> None:
    """`clip-index embed` exits 2 with the message, before reading any image."""
    from clip_index.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ["embed", "--images", str(tmp_path / "none"), "--shards", "0", "--output-dir",
            str(tmp_path / "out"), "--device", "cpu"]
    assert main([*base, "--model", "ViT-B-31", "--pretrained", "none"]) == 2
    err = capsys.readouterr().err
    assert "model='ViT-B-31' is not an open_clip model" in err and "'ViT-B-32'" in err
    assert main([*base, "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]) == 2
    err = capsys.readouterr().err
    assert "could not fetch pretrained weights 'laion2b_s34b_b79k'" in err
    assert "--pretrained /path/to/" in err
    missing = str(tmp_path / "ckpt.safetensors")
    assert main([*base, "--model", "ViT-B-32", "--pretrained", missing]) == 2
    assert "not a file nor a pretrained tag" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_decode_workers_give_the_same_rows(tmp_path) -> None:
    """Decoding in DataLoader worker processes (the GPU default) changes nothing in the output."""
    _image_shard(str(tmp_path / "images" / io.shard_name(0)))
    outputs = {}
    for workers in (0, 2):
        config = EmbedConfig(**{**CONFIG.as_dict(), "num_workers": workers})
        run_embed([str(tmp_path / "images")], [0], str(tmp_path / f"emb{workers}"), config)
        rows = io.read_parquet(str(tmp_path / f"emb{workers}" / io.shard_name(0))).to_pylist()
        outputs[workers] = {r["uid"]: (r["status"], r["embedding"]) for r in rows}
    assert outputs[0].keys() == outputs[2].keys() and len(outputs[0]) == 7
    for uid, (status, vector) in outputs[0].items():
        assert outputs[2][uid][0] == status
        if vector is not None:
            np.testing.assert_array_equal(outputs[2][uid][1], vector)
