"""The images' `test` stage, replayed without Docker (tests/support/docker_view.py): exactly the
files .dockerignore admits, laid out as each Dockerfile's COPY/RUN lines put them, the package
installed from a wheel built there, and the image's own pytest command run in that folder with
only the distributions the image installs. A test that needs a file or a module the image lacks
fails here, in `make test`, instead of stopping Cloud Build before anything is pushed.

The full tests/unit takes minutes on a 2-core machine, so the replay runs the modules that can
reach files outside the package (they name a top-level entry of the repository that the image
does not hold) plus a few that import the installed subpackages through the CLI; the other
modules only use the installed package and tests/, which the replay shows are there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import docker_view as dv
from tests.support.checkout import needs_checkout

pytestmark = needs_checkout(".dockerignore", "containers/cpu.Dockerfile",
                            "containers/gpu.Dockerfile")
ROOT = dv.ROOT
# modules that import clip_index.pipelines/.components/.launch through the installed package
SMOKE = ["tests/unit/test_plan.py::test_json_output", "tests/unit/test_config.py"]


# --- the .dockerignore matcher, on Docker's documented examples ---------------------------------

@pytest.mark.parametrize("patterns, path, excluded", [
    ("*", "pyproject.toml", True),
    ("*\n!pyproject.toml", "pyproject.toml", False),
    ("*\n!clip_index/", "clip_index/io.py", False),           # an exception admits a folder's files
    ("*\n!clip_index/", "clip_index_old/io.py", True),
    ("*\n!tests/\n**/__pycache__", "tests/unit/__pycache__/x.pyc", True),
    ("**/*.pyc", "a.pyc", True),                               # `**/` matches no folder too
    ("*/temp*", "somedir/temporary.txt", True),                # Docker's documentation examples
    ("*/temp*", "temporary.txt", False),
    ("*/*/temp*", "somedir/subdir/temporary.txt", True),
    ("temp?", "tempa", True),
    ("temp?", "tempab", False),
    ("/foo/bar", "foo/bar/x", True),            # leading `/` dropped; a parent's match counts
    ("bar", "foo/bar", False),                  # anchored at the root (unlike .gitignore)
    ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),  # the last match decides
    ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
    ("# comment\n*.md", "# comment", False),
    ("docs/**/*.png", "docs/a/b/c.png", True),
])
def test_dockerignore_semantics(patterns: str, path: str, excluded: bool) -> None:
    assert dv.DockerIgnore.parse(patterns).excluded(path) is excluded


def test_build_context_is_the_package_and_its_tests_only() -> None:
    files = dv.context_files()
    tops = {f.split("/")[0] for f in files}
    assert tops == {"pyproject.toml", "constraints.txt", "clip_index", "components", "pipelines",
                    "containers", "tests"}, tops
    assert "containers/stub_packages.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.startswith(("bench/", ".venv/", ".git/"))]


# --- the replayed test stage ----------------------------------------------------------------------

def _reaches_the_checkout(module: Path, absent: set[str]) -> bool:
    """Whether the module names a top-level entry of the repository that the image lacks (the
    only way a test reaches such a file: `ROOT / "containers"`, "notebooks/…", "bench/…")."""
    text = module.read_text()
    return any(re.search(rf"[\"'/]{re.escape(name)}\b", text) for name in absent)


def _tracked_top_level() -> set[str]:
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # no git: what the folder holds
        files = [p.name for p in ROOT.iterdir()]
    return {f.split("/")[0] for f in files}


def _selection(view: dv.View) -> list[str]:
    # the package's sources are reached as (installed) modules, not as files
    absent = _tracked_top_level() - {p.name for p in view.workdir.iterdir()} - {
        "clip_index", "components", "pipelines"}
    chosen = [f"tests/unit/{m.name}" for m in sorted((ROOT / "tests/unit").glob("test_*.py"))
              if m.name != Path(__file__).name and _reaches_the_checkout(m, absent)]
    return sorted(set(chosen) | set(SMOKE))


@pytest.fixture(scope="module", params=["cpu.Dockerfile", "gpu.Dockerfile"])
def view(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dv.View:
    out = tmp_path_factory.mktemp(request.param.split(".")[0])
    return dv.build_view(ROOT / "containers" / request.param, out)


def test_view_holds_what_the_copy_lines_put_there(view: dv.View) -> None:
    names = {p.name for p in view.workdir.iterdir()}
    assert {"pyproject.toml", "constraints.txt", "tests"} <= names
    assert "stub_packages.py" not in names  # removed by the RUN that used it
    for package in ("clip_index/launch", "clip_index/components", "clip_index/pipelines"):
        assert (view.site / package / "__init__.py").exists(), package
    assert view.test_command[:3] == ["python", "-m", "pytest"]
    assert "tests/unit" in view.test_command
    assert view.env.get("HF_HUB_OFFLINE") == "1"
    # both images read and write gs:// and s3:// (the Kubeflow README offers both)
    assert {"gcsfs", "s3fs", "kfp", "torch"} <= dv.closure(view.requirements)


def test_image_test_command_passes_in_the_view(view: dv.View) -> None:
    paths = _selection(view)
    assert "tests/unit/test_containers.py" in paths and "tests/unit/test_packaging.py" in paths
    # the source must not be left in the WORKDIR, where it would shadow the installed package
    assert not (view.workdir / "clip_index").exists()
    result = dv.run_tests(view, paths)
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-4000:] + result.stderr[-2000:]
    failed = _failures(result.stdout)
    assert result.returncode == 0 or failed, result.stdout[-4000:] + result.stderr[-2000:]
    if failed:  # only what fails in the image's view and passes here is the image's fault
        here = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *sorted(failed)], cwd=ROOT, capture_output=True, text=True)
        image_only = failed - _failures(here.stdout)
        assert not image_only, (f"fail only in the image's view: {sorted(image_only)}\n"
                                + result.stdout[-6000:])


def _failures(stdout: str) -> set[str]:
    """Node ids of the FAILED/ERROR lines of pytest's short summary (`-ra`)."""
    # ids may hold spaces (parameters); pytest ends the id with " - message"
    return set(re.findall(r"^(?:FAILED|ERROR) (\S+::.*?)(?: - .*)?$", stdout, re.MULTILINE))


def test_the_view_catches_a_missing_file_and_a_module_the_image_lacks(
        tmp_path: Path) -> None:
    view = dv.build_view(ROOT / "containers/cpu.Dockerfile", tmp_path)
    probe = view.workdir / "tests/unit/test_probe_view.py"
    probe.write_text(
        "from pathlib import Path\n\n"
        "def test_reads_a_repository_file():\n"
        "    assert (Path(__file__).parents[2] / 'cloudbuild.yaml').read_text()\n\n"
        "def test_imports_the_notebook_extra():\n"
        "    import nbformat  # noqa: F401  (the `notebook` extra: not in the image)\n\n"
        "def test_imports_the_installed_pipelines():\n"
        "    import clip_index.pipelines  # noqa: F401\n")
    result = dv.run_tests(view, [os.path.relpath(probe, view.workdir)])
    out = result.stdout
    assert result.returncode == 1, out
    assert "FAILED tests/unit/test_probe_view.py::test_reads_a_repository_file" in out
    assert "FAILED tests/unit/test_probe_view.py::test_imports_the_notebook_extra" in out
    assert "not installed in the image" in out
    assert "1 passed" in out  # the installed package, not the checkout's editable one
