"""needs_checkout: a missing repository file fails its tests in a checkout and skips them only
in a container image's test stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.checkout import CHECKOUT_MARKER, needs_checkout


def test_a_missing_file_fails_in_a_checkout(tmp_path: Path) -> None:
    (tmp_path / CHECKOUT_MARKER).write_text("")
    with pytest.raises(FileNotFoundError, match="cloudbuild.yaml"):
        needs_checkout("cloudbuild.yaml", root=tmp_path)


def test_present_files_run_in_a_checkout(tmp_path: Path) -> None:
    (tmp_path / CHECKOUT_MARKER).write_text("")
    (tmp_path / "cloudbuild.yaml").write_text("")
    assert needs_checkout("cloudbuild.yaml", root=tmp_path).args == (False,)


def test_an_image_skips(tmp_path: Path) -> None:
    assert needs_checkout("cloudbuild.yaml", root=tmp_path).args == (True,)
