"""The Dockerfiles and cloudbuild.yaml, checked without a Docker engine: pins agree with
pyproject.toml and constraints.txt, base images are pinned, copied paths exist, and Cloud Build
runs lint/tests → build → push → compile with the pushed tag → upload."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.checkout import needs_checkout

pytestmark = needs_checkout("containers", "cloudbuild.yaml", ".dockerignore")
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "containers").glob("*.Dockerfile"))


def pins(path: Path) -> dict[str, str]:
    """name → version for every `name==version` line of a requirements/constraints file."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def pyproject_pin(name: str) -> str:
    m = re.search(rf'"{name}==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert m, f"pyproject.toml pins no {name}"
    return m.group(1)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in text.splitlines() if line.strip() and not line.startswith("#")]


def args_of(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions(path) if i == "ARG" and "=" in a)


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["cpu.Dockerfile", "gpu.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_versions_agree_with_pyproject_and_constraints(dockerfile: Path) -> None:
    constraints = pins(ROOT / "constraints.txt")
    args = args_of(dockerfile)
    assert args["KFP_VERSION"] == pyproject_pin("kfp") == constraints["kfp"]
    assert args["TORCH_VERSION"] == constraints["torch"]
    if "TORCHVISION_VERSION" in args:
        assert args["TORCHVISION_VERSION"] == constraints["torchvision"]
    runs = " ".join(a for i, a in instructions(dockerfile) if i == "RUN")
    # the GPU image: constraints.txt less its CUDA 13 packages (test_gpu_image_resolution.py)
    own = "gpu-constraints.txt" if dockerfile.name == "gpu.Dockerfile" else "constraints.txt"
    assert f"-c {own}" in runs and '"kfp==${KFP_VERSION}"' in runs
    assert "kfp.__version__ == '${KFP_VERSION}'" in runs  # the build fails on a drift


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    bases = [a.split()[0] for i, a in instructions(dockerfile) if i == "FROM"]
    stages = {a.split()[-1] for i, a in instructions(dockerfile) if i == "FROM" and " AS " in a}
    external = [b for b in bases if b not in stages]
    assert external
    for base in external:
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, base
        assert re.search(r"\d", tag), f"{base}: expected a versioned tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_pass_dockerignore(dockerfile: Path) -> None:
    from tests.support.docker_view import context_files

    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # the context is only what is allowed back in
    context = context_files(ROOT)  # Docker's .dockerignore rules (tests/support/docker_view.py)
    copies = [a.split() for i, a in instructions(dockerfile) if i == "COPY"]
    assert copies
    for parts in copies:
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
            assert any(f == src or f.startswith(src + "/") for f in context), (
                f"{src} is excluded by .dockerignore")
    assert (ROOT / "clip_index/__init__.py").exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_has_runtime_and_test_stages(dockerfile: Path) -> None:
    froms = [a for i, a in instructions(dockerfile) if i == "FROM"]
    assert froms[0].endswith(" AS runtime") and froms[-1] == "runtime AS test"
    test_runs = dockerfile.read_text().split("AS test", 1)[1]
    assert "pytest" in test_runs and "tests/unit" in test_runs


def test_cloudbuild_order_and_tags() -> None:
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    steps = {s["id"]: s for s in build["steps"]}
    assert list(steps) == ["test", "build-cpu", "build-gpu", "push-cpu", "push-gpu", "compile",
                           "upload-registry", "upload-gcs"]
    for sub in ("_REGION", "_REPOSITORY", "_KFP_REPOSITORY", "_IMAGE_REPO"):
        assert sub in build["substitutions"]
    assert "${PROJECT_ID}" in build["substitutions"]["_IMAGE_REPO"]

    def after(step: str) -> set[str]:  # every step `step` waits for, transitively
        direct = set(steps[step].get("waitFor", []))
        return direct.union(*(after(d) for d in direct)) if direct else set()

    assert after("build-cpu") == after("build-gpu") == {"test"}
    assert "build-cpu" in after("push-cpu") and "build-gpu" in after("push-gpu")
    assert {"push-cpu", "push-gpu"} <= after("compile")
    assert "compile" in after("upload-registry") and "compile" in after("upload-gcs")
    test_script = steps["test"]["args"][-1]
    assert "ruff check" in test_script and "pytest" in test_script

    pushed = {s["args"][1] for s in (steps["push-cpu"], steps["push-gpu"])}
    assert pushed == {"${_IMAGE_REPO}/clip-index-cpu:$COMMIT_SHA",
                      "${_IMAGE_REPO}/clip-index-gpu:$COMMIT_SHA"}
    for image in pushed:  # what is pushed is what was built
        name = "build-" + image.split("clip-index-")[1].split(":")[0]
        assert f"-t {image} ." in steps[name]["args"][-1]
    compile_args = steps["compile"]["args"]
    # the installed command: `python compile.py` from /workspace would import the checkout's
    # clip_index/, which lacks clip_index.pipelines (mapped by package-dir at install time)
    assert steps["compile"]["entrypoint"] == "clip-index" and compile_args[0] == "compile"
    for step in build["steps"]:
        if step["name"].startswith("${_IMAGE_REPO}/"):
            script = " ".join([step.get("entrypoint", ""), *step.get("args", [])])
            assert "compile.py" not in script and "-m clip_index" not in script, step["id"]
    assert compile_args[compile_args.index("--image-tag") + 1] == "$COMMIT_SHA"
    assert compile_args[compile_args.index("--image-repo") + 1] == "${_IMAGE_REPO}"
    assert "compiled/clip-index.yaml" in steps["upload-registry"]["args"][-1]
    assert "RegistryClient" in steps["upload-registry"]["args"][-1]
