"""Tests of the synthetic shape sample: determinism, table contract, formats, captions, URLs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clip_index.launch.sample import (
    CAPTIONS_FILE,
    COLOURS,
    KINDS,
    SAMPLE_SCHEMA,
    SHAPES,
    draw_shape,
    make_sample,
    sample_urls,
)

N_IMAGES = 72


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    out_dir = tmp_path_factory.mktemp("sample")
    return out_dir, make_sample(out_dir, n_images=N_IMAGES, seed=0)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    make_sample(tmp_path / "a", n_images=12, seed=3)
    make_sample(tmp_path / "b", n_images=12, seed=3)
    make_sample(tmp_path / "c", n_images=12, seed=4)
    first = _file_bytes(tmp_path / "a")
    assert len(first) == 13  # 12 images + captions.parquet
    assert first == _file_bytes(tmp_path / "b")
    assert first != _file_bytes(tmp_path / "c")


def test_table_contract(sample: tuple[Path, pa.Table]) -> None:
    out_dir, table = sample
    assert table.schema.equals(SAMPLE_SCHEMA)
    assert pq.read_table(out_dir / CAPTIONS_FILE).equals(table)
    rows = table.to_pylist()
    assert [row["uid"] for row in rows] == [f"sample-{i:06d}" for i in range(N_IMAGES)]
    for row in rows:
        assert row["file"].startswith(f"images/{row['uid']}.")
        assert (out_dir / row["file"]).is_file()


def test_formats_match_extensions_and_size(sample: tuple[Path, pa.Table]) -> None:
    out_dir, table = sample
    formats: Counter[tuple[str, str | None]] = Counter()
    for file in table.column("file").to_pylist():
        with Image.open(out_dir / file) as image:
            assert image.size == (256, 256)
            assert image.mode == "RGB"
            formats[(Path(file).suffix, image.format)] += 1
    assert set(formats) == {(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP")}
    assert set(formats.values()) == {N_IMAGES // 3}


def test_captions_name_shape_and_colour(sample: tuple[Path, pa.Table]) -> None:
    _, table = sample
    rows = table.to_pylist()
    for row in rows:
        assert (row["shape"], row["colour"]) in KINDS
        assert row["shape"] in row["text"].split()
        assert row["colour"] in row["text"].split()
    assert Counter((row["shape"], row["colour"]) for row in rows) == Counter(
        {kind: N_IMAGES // len(KINDS) for kind in KINDS}
    )


def test_kinds_cover_shapes_and_colours() -> None:
    assert len(KINDS) == len(set(KINDS)) == 36
    assert {"circle", "square", "triangle", "star"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "purple", "orange"} == set(COLOURS)


@pytest.mark.parametrize("rng", [random.Random(1), np.random.default_rng(1)], ids=type)
def test_draw_shape_accepts_both_generators(rng: random.Random | np.random.Generator) -> None:
    image = draw_shape("star", "red", rng, size_px=96)
    assert image.mode == "RGB"
    assert image.size == (96, 96)
    red = np.asarray(image, dtype=np.int16)
    assert ((red[..., 0] > 170) & (red[..., 1] < 80) & (red[..., 2] < 80)).sum() > 50


def test_draw_shape_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="shape"):
        draw_shape("hexagon", "red", random.Random(0))
    with pytest.raises(ValueError, match="colour"):
        draw_shape("circle", "teal", random.Random(0))


def test_sample_urls(sample: tuple[Path, pa.Table]) -> None:
    _, table = sample
    urls = sample_urls(table, "http://127.0.0.1:8000/data/")
    assert urls.column_names == ["uid", "url", "text", "shape", "colour"]
    assert urls.num_rows == N_IMAGES
    first = urls.slice(0, 1).to_pylist()[0]
    assert first["url"] == f"http://127.0.0.1:8000/data/{table.column('file')[0].as_py()}"
    assert urls.column("uid").equals(table.column("uid"))
    assert urls.column("text").equals(table.column("text"))
