"""Replays the GPU image's two pip installs offline, with stand-in wheels: what pip would
install, from its own resolver (`pip install --dry-run --report`), not from a reimplementation.

The stand-ins are empty wheels with the names and versions of constraints.txt (what PyPI
serves) and of PyTorch's cu126 index. They declare no requirements, except the torch family and
the CUDA packages, whose requirements decide whether torch gets replaced and which CUDA stack
comes in:

- PyPI's torch 2.14.1 (a CUDA 13 build): its Requires-Dist, copied from the wheel's METADATA.
- The cu126 torch 2.14.1+cu126: the Requires-Dist layout of PyTorch's CUDA 12 wheels since
  torch 2.10 (`cuda-toolkit[...]==12.x.y`, `cuda-bindings<13,>=12.9.4`, `nvidia-*-cu12` pins,
  e.g. the 12.8.1 / 12.6.3 lines quoted in pip logs of cu128/cu126 installs); the exact cu12
  versions are stand-ins (PyTorch's index is not reachable here), the names and the major
  versions are what matter to the resolution.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

TORCH = "2.14.1"
TORCHVISION = "0.29.1"
CUDA_EXTRAS = ["cublas", "cudart", "cufft", "cufile", "cupti", "curand", "cusolver", "cusparse",
               "nvjitlink", "nvrtc", "nvtx"]
LINUX = '; platform_system == "Linux"'
TORCH_COMMON = ["filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "sympy>=1.13.3",
                "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5",
                f'triton~=3.8.0{LINUX} and python_version < "3.15"']
PYPI_TORCH_REQUIRES = [  # torch-2.14.1 (PyPI), METADATA
    *TORCH_COMMON,
    f"cuda-toolkit[{','.join(CUDA_EXTRAS)}]==13.0.3{LINUX}",
    f'cuda-bindings<14,>=13.0.3{LINUX} and python_version < "3.15"',
    f"nvidia-cudnn-cu13==9.24.0.43{LINUX}", f"nvidia-cusparselt-cu13==0.8.1{LINUX}",
    f"nvidia-nccl-cu13==2.30.7{LINUX}", f"nvidia-nvshmem-cu13==3.4.5{LINUX}",
]
CU12 = {"cuda-toolkit": "12.6.3", "cuda-bindings": "12.9.4", "nvidia-cudnn-cu12": "9.10.2.21",
        "nvidia-cusparselt-cu12": "0.7.1", "nvidia-nccl-cu12": "2.28.9",
        "nvidia-nvshmem-cu12": "3.4.5"}
CU126_TORCH_REQUIRES = [
    *TORCH_COMMON,
    f"cuda-toolkit[{','.join(e for e in CUDA_EXTRAS if e != 'nvjitlink')}]=="
    f"{CU12['cuda-toolkit']}{LINUX}",
    f'cuda-bindings<13,>={CU12["cuda-bindings"]}{LINUX} and python_version < "3.15"',
    *(f"{name}=={version}{LINUX}" for name, version in CU12.items()
      if name.startswith("nvidia-")),
]
TORCHVISION_REQUIRES = ["numpy", f"torch>={TORCH.rsplit('.', 1)[0]}.0", "pillow!=8.3.*,>=5.3.0"]


def wheel(folder: Path, name: str, version: str, requires: Sequence[str] = (),
          extras: Sequence[str] = ()) -> Path:
    """An empty, installable wheel `name==version` declaring `requires` and `extras`."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
            *(f"Provides-Extra: {e}" for e in extras),
            *(f"Requires-Dist: {r}" for r in requires)]
    files = {f"{info}/METADATA": "\n".join(meta) + "\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stand-in\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name_in_zip, text in files.items():
            zf.writestr(name_in_zip, text)
    return path


def pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def project_requirements(pyproject: Path, extra: str) -> list[str]:
    """The requirements `pip install ".[extra]"` asks for (the project's own extras expanded)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = list(project["dependencies"])
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in project["optional-dependencies"][name]:
            m = re.match(r"^clip-index\[([^\]]+)\]$", req)
            if m:
                todo += m.group(1).split(",")
            else:
                out.append(req)
    return out


@dataclass
class Indexes:
    """Stand-in wheel folders: `pytorch` (PyTorch's cu126 index), `pypi` (PyPI)."""

    pytorch: Path
    pypi: Path
    made: list[Path] = field(default_factory=list)


def make_indexes(root: Path, constraints: str) -> Indexes:
    indexes = Indexes(root / "pytorch-cu126", root / "pypi")
    pinned = pins(constraints)
    torch_family = {"torch", "torchvision"}
    for name, version in pinned.items():
        if name in torch_family:
            continue
        if name == "cuda-toolkit":
            wheel(indexes.pypi, name, version, extras=CUDA_EXTRAS)
        else:
            wheel(indexes.pypi, name, version)
    # PyPI's torch builds, and the cu12 packages (PyPI serves those too)
    wheel(indexes.pypi, "torch", TORCH, PYPI_TORCH_REQUIRES)
    wheel(indexes.pypi, "torchvision", TORCHVISION, TORCHVISION_REQUIRES)
    for folder in (indexes.pypi, indexes.pytorch):
        for name, version in CU12.items():
            wheel(folder, name, version, extras=CUDA_EXTRAS if name == "cuda-toolkit" else [])
    # PyPI's cuda-toolkit 13 and the other cu13 packages torch asks for, where not pinned
    wheel(indexes.pypi, "cuda-toolkit", "13.0.3", extras=CUDA_EXTRAS)
    for name, version in (("cuda-bindings", "13.0.3"), ("nvidia-cudnn-cu13", "9.24.0.43"),
                          ("nvidia-cusparselt-cu13", "0.8.1"), ("nvidia-nccl-cu13", "2.30.7"),
                          ("nvidia-nvshmem-cu13", "3.4.5")):
        wheel(indexes.pypi, name, version)
    # not in a freeze; both indexes serve it
    for folder in (indexes.pypi, indexes.pytorch):
        wheel(folder, "setuptools", "80.9.0")
    # PyTorch's cu126 index: its torch builds, and the packages torch needs (it mirrors them)
    wheel(indexes.pytorch, "torch", f"{TORCH}+cu126", CU126_TORCH_REQUIRES)
    wheel(indexes.pytorch, "torchvision", f"{TORCHVISION}+cu126", TORCHVISION_REQUIRES)
    for name in ("filelock", "typing-extensions", "setuptools", "sympy", "networkx", "jinja2",
                 "fsspec", "triton", "numpy", "pillow", "mpmath", "markupsafe"):
        version = next((v for n, v in pinned.items()
                        if re.sub(r"[-_.]+", "-", n.lower()) == name), None)
        if version:
            wheel(indexes.pytorch, name, version)
    return indexes


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This venv's pip, acting on the environment of `python` (pip --python), offline."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python),
                           "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def install_report(python: Path, find_links: Path, requirements: list[str],
                   constraints: Path) -> dict:
    """pip's report of what `pip install -c constraints requirements` would install."""
    report = python.parent.parent / "report.json"
    proc = pip(python, "install", "--dry-run", "--quiet", "--report", str(report), "--no-index",
               "--find-links", str(find_links), "-c", str(constraints), *requirements)
    if proc.returncode != 0:
        raise RuntimeError(f"pip could not resolve the install: {proc.stderr[-3000:]}")
    return json.loads(report.read_text())
