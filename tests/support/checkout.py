"""Marks for tests of repository files that the container images do not hold.

The images' `test` stage runs tests/unit against the installed package with only tests/ copied
beside it (see containers/*.Dockerfile): a test that reads the Dockerfiles, cloudbuild.yaml,
the notebook or the source tree skips there, saying so. In a checkout (the Makefile is there; the
images never copy it) nothing skips: a file the test reads that is missing fails it, so renaming
cloudbuild.yaml breaks its tests instead of silencing them. tests/unit/test_docker_view.py checks
that nothing else is missing in the image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_MARKER = "Makefile"  # in every checkout, never in an image (.dockerignore)


def needs_checkout(*paths: str, root: Path = ROOT) -> pytest.MarkDecorator:
    """Skip in a container image's test stage; in a checkout, raise FileNotFoundError (the
    test module fails to collect) when a path (relative to the repository root) is missing."""
    in_image = not (root / CHECKOUT_MARKER).exists()
    missing = [p for p in paths if not (root / p).exists()]
    if missing and not in_image:
        raise FileNotFoundError(f"{', '.join(missing)}: missing from the checkout at {root}, "
                                "and the tests that read them cannot run without them")
    return pytest.mark.skipif(in_image, reason=f"{', '.join(paths)}: not in a container "
                              "image's test stage; tested on the checkout")
