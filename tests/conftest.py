"""Shared fixtures: offline hub, a local HTTP server, sample images and the tiny CLIP."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# no network here: a pretrained tag must fail at once instead of retrying the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GPU_ONLY_HELP = "run with -m gpu (make gpu-check) on a machine whose torch sees a GPU"


def gpu_only_session(markexpr: str) -> bool:
    """Whether `-m markexpr` selects tests marked `gpu` and no unmarked test (`-m gpu`)."""
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression

    expression = Expression.compile(markexpr)
    return (expression.evaluate(lambda name, **_: name == "gpu")
            and not expression.evaluate(lambda name, **_: False))


def pytest_configure(config: pytest.Config) -> None:
    """Tests run on the CPU unless the session is `-m gpu`: CUDA is hidden (CUDA_VISIBLE_DEVICES
    empty, inherited by every subprocess a test starts) before any test module imports torch,
    so `device="auto"` means the CPU on a GPU machine too and `gpu` tests skip. A `-m gpu`
    session on a machine where torch sees no GPU stops at once (no silent skips)."""
    if not gpu_only_session(config.option.markexpr):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    import torch

    if not torch.cuda.is_available():
        pytest.exit(f"no GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
                    f"CUDA device, and a -m gpu session must not skip; {GPU_ONLY_HELP}",
                    returncode=3)

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
