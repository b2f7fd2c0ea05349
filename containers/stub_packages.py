"""Create empty stand-ins for the packages pyproject.toml lists, so that the images can install
the dependencies in a layer of their own before the source is copied (a layer that survives
code changes). Run from the build context's root; the stand-ins are removed afterwards."""

import tomllib
from pathlib import Path

setuptools = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]
mapped = setuptools.get("package-dir", {})
for package in setuptools["packages"]:
    folder = Path(mapped.get(package, package.replace(".", "/")))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").touch()
