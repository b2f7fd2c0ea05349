"""The wheel: top-level components/ and pipelines/ install inside clip_index, never as top-level
modules of their own, and every package folder of the source tree is in pyproject's list."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.support.checkout import needs_checkout

pytestmark = needs_checkout("clip_index/__init__.py", "components", "pipelines")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("clip_index-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_maps_components_and_pipelines_into_the_package(wheel_names: set[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_names}
    assert not tops & {"components", "pipelines", "tests", "bench"}, tops
    for module in ("clip_index/components/__init__.py", "clip_index/components/embed_images.py",
                   "clip_index/pipelines/__init__.py", "clip_index/pipelines/clip_index.py",
                   "clip_index/pipelines/settings.py", "clip_index/pipelines/kubeflow.py",
                   "clip_index/embed/assets/tiny-clip.safetensors"):
        assert module in wheel_names


def test_every_source_package_is_listed_and_shipped(wheel_names: set[str]) -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "clip_index").rglob("__init__.py")}
    found |= {"clip_index.components", "clip_index.pipelines"}
    assert found == listed, "pyproject.toml [tool.setuptools] packages is out of date"
    shipped = {name for name in wheel_names if name.endswith(".py")}
    for folder, package in ((ROOT / "components", "clip_index/components"),
                            (ROOT / "pipelines", "clip_index/pipelines")):
        for source in folder.glob("*.py"):
            assert f"{package}/{source.name}" in shipped
