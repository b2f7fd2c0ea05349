"""Shared fixtures: offline hub, a local HTTP server, sample images and the tiny CLIP."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# no network here: a pretrained tag must fail at once instead of retrying the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support.http_server import TestServer  # noqa: E402


@pytest.fixture
def http_server() -> Iterator[TestServer]:
    server = TestServer().start()
    try:
        yield server
    finally:
        server.stop()


def jpeg_bytes(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30),
               fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    from PIL import Image

    img = Image.new(mode, (width, height), colour if mode == "RGB" else None)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled synthetic sample (images + captions), made once per session."""
    from clip_index.launch.sample import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(out, n_images=120)
    return out
