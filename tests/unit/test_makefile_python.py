"""`make` stops at once, with the reason, on a Python the package does not install on (3.13:
autofaiss 2.18 pins numpy<2, which has no 3.13 wheel), and goes on with a supported one. A stub
`python3` first on PATH reports the version; `make -n` runs nothing else (no venv, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def make_with_python(version: str, tmp_path: Path, *goals: str) -> subprocess.CompletedProcess[str]:
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f"#!/bin/sh\necho {version}\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHON", None)
    # run under `make test` (CI), the outer make's variables would make this one a sub-make
    # that prints "Entering directory" and inherits its flags
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)
    return subprocess.run(["make", "--no-print-directory", "-n", *goals,
                           f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("goal", ["install", "test", "demo"])
def test_python_3_13_stops_make_with_the_reason(tmp_path: Path, goal: str) -> None:
    result = make_with_python("3.13", tmp_path, goal)
    assert result.returncode != 0
    assert "python3 is Python 3.13: clip-index installs on Python 3.10 to 3.12 only" in \
        result.stderr
    assert "numpy<2" in result.stderr and "PYTHON=python3.12" in result.stderr
    assert result.stdout == ""  # stopped before any recipe


def test_a_supported_python_goes_on(tmp_path: Path) -> None:
    result = make_with_python("3.11", tmp_path, "install")
    assert result.returncode == 0, result.stderr
    assert f"python3 -m venv {tmp_path / 'venv'}" in result.stdout


def test_clean_needs_no_python(tmp_path: Path) -> None:
    assert make_with_python("3.13", tmp_path, "clean").returncode == 0
