"""Tests of the bundled tiny-clip: it loads through open_clip offline and it ranks by meaning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_index.embed.assets import (
    MODEL_CONFIG_DIR,
    TINY_CLIP_MODEL,
    TINY_CLIP_WEIGHTS,
    register_model_configs,
)
from clip_index.launch.sample import KINDS, make_sample

Model = tuple[open_clip.CLIP, Callable[[Image.Image], torch.Tensor], Callable[..., torch.Tensor]]


@pytest.fixture(scope="module")
def tiny_clip() -> Model:
    torch.set_num_threads(2)
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-clip", pretrained=str(TINY_CLIP_WEIGHTS)
    )
    return model.eval(), preprocess, open_clip.get_tokenizer("tiny-clip")


@pytest.fixture(scope="module")
def sample_embeddings(
    tiny_clip: Model, tmp_path_factory: pytest.TempPathFactory
) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """L2-normalised (480, 64) image embeddings of the default sample and each image's kind."""
    model, preprocess, _ = tiny_clip
    out_dir = tmp_path_factory.mktemp("sample")
    table = make_sample(out_dir, n_images=480, seed=0)
    images = torch.stack([_load(out_dir / file, preprocess) for file in table["file"].to_pylist()])
    with torch.no_grad():
        embeddings = torch.cat([model.encode_image(chunk) for chunk in images.split(160)])
    kinds = list(zip(table["shape"].to_pylist(), table["colour"].to_pylist(), strict=True))
    return F.normalize(embeddings, dim=-1), kinds


def _load(path: Path, preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    with Image.open(path) as image:
        return preprocess(image)


def _text_embeddings(tiny_clip: Model, texts: list[str]) -> torch.Tensor:
    model, _, tokenizer = tiny_clip
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def test_assets_are_where_the_package_says() -> None:
    assert TINY_CLIP_WEIGHTS.is_file()
    assert TINY_CLIP_WEIGHTS.stat().st_size < 10_000_000
    assert (MODEL_CONFIG_DIR / f"{TINY_CLIP_MODEL}.json").is_file()


def test_register_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    register_model_configs()
    calls: list[object] = []
    monkeypatch.setattr(open_clip, "add_model_config", calls.append)
    register_model_configs()
    assert calls == []
    assert TINY_CLIP_MODEL in open_clip.list_models()


def test_loads_with_exact_weights_and_16_token_tokenizer(tiny_clip: Model) -> None:
    model, preprocess, tokenizer = tiny_clip
    assert tokenizer(["a red circle"]).shape == (1, 16)
    assert preprocess(Image.new("RGB", (256, 256), "white")).shape == (3, 64, 64)
    assert not any(p.isnan().any() for p in model.parameters())
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 5_000_000


def test_every_kind_query_ranks_its_kind_first(
    tiny_clip: Model, sample_embeddings: tuple[torch.Tensor, list[tuple[str, str]]]
) -> None:
    images, kinds = sample_embeddings
    texts = _text_embeddings(tiny_clip, [f"a {colour} {shape}" for shape, colour in KINDS])
    best = (texts @ images.T).argmax(dim=1).tolist()
    assert [kinds[i] for i in best] == KINDS


def test_red_circle_top_10_are_mostly_red_circles(
    tiny_clip: Model, sample_embeddings: tuple[torch.Tensor, list[tuple[str, str]]]
) -> None:
    images, kinds = sample_embeddings
    scores = (_text_embeddings(tiny_clip, ["a red circle"]) @ images.T)[0]
    top = scores.topk(10).indices.tolist()
    assert sum(kinds[i] == ("circle", "red") for i in top) >= 8
