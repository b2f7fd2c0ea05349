"""Marks for tests of repository files that the container images do not hold.

The images' `test` stage runs tests/unit against the installed package with only tests/ copied
beside it (see containers/*.Dockerfile): a test that reads the Dockerfiles, cloudbuild.yaml,
the notebook or the source tree skips there, saying so, and runs on the checkout (make test and
Cloud Build's `test` step). tests/unit/test_docker_view.py checks that nothing else is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def needs_checkout(*paths: str) -> pytest.MarkDecorator:
    """Skip unless every path (relative to the repository root) exists."""
    missing = [p for p in paths if not (ROOT / p).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)}: not in this tree "
                              "(a container image's test stage); tested on the checkout")
