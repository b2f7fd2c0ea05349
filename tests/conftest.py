"""Shared fixtures: offline hub, a local HTTP server, sample images and the tiny CLIP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gpu import GPU_ONLY_HELP, gpu_only_session

# no network here: a pretrained tag must fail at once instead of retrying the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled synthetic sample (images + captions), made once per session."""
    from clip_index.launch.sample import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(out, n_images=120)
    return out
