"""The Docker test stage's view of the repository, built without a Docker engine.

`build_view(dockerfile)` replays the Dockerfile's `test` stage (and the stages it is built FROM)
in a temporary folder: COPY takes exactly the files `.dockerignore` admits, RUN's `rm -rf` deletes,
and `pip install --no-deps .` installs the package as a wheel built from the view at that point
(into a folder that stands for site-packages). The image's test command then runs there with the
development Python, restricted by a `sitecustomize` to what the image would have: the editable
install of this checkout is switched off, and modules of distributions the image's
`pip install` lines do not bring in (the closure of their requirements) fail to import.

Not simulated: the base image's own packages (assumed to be none beyond what pip installs),
the other RUN commands, and child processes that a test starts with its own PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


# --- .dockerignore -----------------------------------------------------------------------------
# Hand-written (30 lines): pathspec implements .gitignore, whose rules differ (there a pattern
# without a slash matches at any depth; in Docker it is anchored at the context root), and
# docker-py's matcher would be a dependency for this test alone. Semantics, from Docker's
# documentation of the .dockerignore file (and moby/patternmatcher): lines trimmed, `#` lines
# are comments, patterns are cleaned (filepath.Clean) with a leading `/` dropped; `*` and `?`
# do not cross `/`, `**` matches any number of directories (including none); a pattern excludes
# a path when it matches the path or one of its parent folders; `!` makes an exception, and the
# last matching line decides.

def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # `**/`: any number of folders, including none
                out += "(.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + "$")


@dataclass(frozen=True)
class DockerIgnore:
    """The patterns of a .dockerignore file: (regex, is_exception) in file order."""

    rules: tuple[tuple[re.Pattern[str], bool], ...]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            line = line.strip()
            exception = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if exception else line).lstrip("/")
            rules.append((_regex(pattern), exception))
        return cls(tuple(rules))

    def excluded(self, path: str) -> bool:
        """Whether `path` (relative to the context root, `/`-separated) is left out."""
        parts = path.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        verdict = False
        for regex, exception in self.rules:
            if any(regex.match(c) for c in candidates):
                verdict = not exception
        return verdict


def context_files(root: Path = ROOT) -> list[str]:
    """The build context: every file under `root` that .dockerignore admits (relative paths)."""
    ignore = DockerIgnore.parse((root / ".dockerignore").read_text())
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if not ignore.excluded(rel):
                files.append(rel)
    return sorted(files)


# --- Dockerfile ----------------------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """stage name → (what it is FROM, its instructions)."""
    out: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for inst, args in instructions(path):
        if inst == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(out))
            current = []
            out[name] = (words[0], current)
        elif current is not None:
            current.append((inst, args))
    return out


@dataclass
class View:
    """A replayed Docker stage: the folder its WORKDIR holds, the folder standing for its
    site-packages, the requirement strings its pip installs named, its test command."""

    workdir: Path
    site: Path
    requirements: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    test_command: list[str] = field(default_factory=list)


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def build_view(dockerfile: Path, out: Path, stage: str = "test", root: Path = ROOT) -> View:
    """Replay `stage` of `dockerfile` into `out` (see the module docstring)."""
    all_stages = stages(dockerfile)
    chain = [stage]
    while all_stages[chain[0]][0] in all_stages:
        chain.insert(0, all_stages[chain[0]][0])
    global_args = dict(a.split("=", 1) for i, a in _preamble(dockerfile) if i == "ARG" and "=" in a)
    allowed = set(context_files(root))
    view = View(workdir=out / "workdir", site=out / "site-packages")
    view.workdir.mkdir(parents=True)
    view.site.mkdir(parents=True)
    for name in chain:
        for inst, a in all_stages[name][1]:
            a = _substitute(a, global_args)
            if inst == "COPY":
                _copy(shlex.split(a), allowed, root, view.workdir)
            elif inst == "RUN":
                _run(a, view)
            elif inst == "ENV":
                view.env.update(dict(w.split("=", 1) for w in shlex.split(a) if "=" in w))
    return view


def _preamble(dockerfile: Path) -> list[tuple[str, str]]:
    found = []
    for inst, a in instructions(dockerfile):
        if inst == "FROM":
            break
        found.append((inst, a))
    return found


def _copy(words: list[str], allowed: set[str], root: Path, workdir: Path) -> None:
    if any(w.startswith("--") for w in words):
        raise NotImplementedError(f"COPY {' '.join(words)}: flags are not replayed")
    *sources, dest = words
    into_folder = len(sources) > 1 or dest.endswith("/") or dest in (".", "./")
    for src in sources:
        src = os.path.normpath(src)
        matched = [f for f in allowed if f == src or f.startswith(src + "/")]
        if not matched:  # what Docker says when .dockerignore leaves a COPY source out
            raise FileNotFoundError(f"COPY {src}: not found in the build context (missing, or "
                                    "excluded by .dockerignore)")
        for f in matched:
            if f == src:
                target = workdir / dest / os.path.basename(f) if into_folder else workdir / dest
            else:  # a folder's contents go into dest
                target = workdir / dest / os.path.relpath(f, src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / f, target)


def _run(command: str, view: View) -> None:
    for segment in (s.strip() for s in command.split("&&")):
        words = shlex.split(segment)
        env = {}
        while words and re.match(r"^\w+=", words[0]):
            k, v = words.pop(0).split("=", 1)
            env[k] = v
        if not words:
            continue
        if words[:2] == ["rm", "-rf"]:
            for pattern in words[2:]:
                for p in view.workdir.glob(pattern):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif words[0].startswith("python") and words[1:3] == ["-m", "pytest"]:
            view.test_command = words
            view.env.update(env)
        elif words[:2] == ["pip", "install"]:
            rest = words[2:]
            if "--no-deps" in rest and rest[-1] == ".":
                _install_wheel(view)
                continue
            skip_next = False
            for w in rest:
                if skip_next:
                    skip_next = False
                elif w in ("-c", "--constraint", "--index-url", "-i", "--extra-index-url"):
                    skip_next = True
                elif not w.startswith("-"):
                    view.requirements.append("clip-index" + w[1:] if w.startswith(".") else w)


def _install_wheel(view: View) -> None:
    """`pip install --no-deps .` in the view: a wheel built from what the view holds now."""
    dist = view.site.parent / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(view.workdir)], check=True, capture_output=True)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(view.site)
    for leftover in ("build",):  # pip builds out of tree; setuptools may leave these behind
        shutil.rmtree(view.workdir / leftover, ignore_errors=True)
    for egg in view.workdir.glob("*.egg-info"):
        shutil.rmtree(egg)


# --- what the image's pip installs bring in ----------------------------------------------------

def closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions these requirements install, transitively (read from
    the metadata of this environment, which holds them all)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        if key[0] == "clip-index":  # this project: what pyproject.toml says now, not the
            requires = _project_requires()  # (possibly stale) metadata of an editable install
        else:
            try:
                requires = metadata.distribution(req.name).requires or []
            except metadata.PackageNotFoundError:
                continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in (*req.extras, "")):
                todo.append(sub)
    return names


def _project_requires() -> list[str]:
    """pyproject.toml's dependencies and extras as requirement strings with `extra` markers."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = list(project.get("dependencies", []))
    for extra, reqs in project.get("optional-dependencies", {}).items():
        for r in reqs:
            spec, _, marker = r.partition(";")
            out.append(f'{spec}; ({marker}) and extra == "{extra}"' if marker.strip()
                       else f'{spec}; extra == "{extra}"')
    return out


def blocked_modules(installed: set[str]) -> dict[str, str]:
    """Top-level module → distribution, for modules no distribution in `installed` provides."""
    out = {}
    for module, dists in metadata.packages_distributions().items():
        if module == "clip_index" or module.startswith("_"):
            continue
        if not any(canonicalize_name(d) in installed for d in dists):
            out[module] = dists[0]
    return out


_SITECUSTOMIZE = '''
import json, os, sys
_cfg = json.load(open(os.environ["CLIP_INDEX_DOCKER_VIEW"]))
# this checkout's editable install is not in the image
def _ours(x):
    return "__editable__" in getattr(x, "__module__", "")
sys.meta_path[:] = [f for f in sys.meta_path if not _ours(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _ours(h)]
# (the checkout itself, not folders inside it: a venv in .venv/ is where the packages are)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _cfg["repo"]]
sys.path_importer_cache.clear()

class _NotInImage:
    blocked = _cfg["blocked"]

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in cls.blocked:
            raise ModuleNotFoundError(
                f"No module named {name!r}: {cls.blocked[top]} is not installed in the image "
                "(its pip install lines do not bring it in)", name=name)
        return None

sys.meta_path.insert(0, _NotInImage)
'''


def run_tests(view: View, paths: list[str] | None = None, extra: list[str] | None = None,
              timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the view's test command in its WORKDIR (test paths replaced by `paths` when given)."""
    command = list(view.test_command)
    assert command[:3] == ["python", "-m", "pytest"], command
    if paths is not None:
        command = [w for w in command if not w.startswith("tests/")] + paths
    # pip, setuptools and wheel come with both base images (python:3.11 and pytorch/pytorch)
    installed = closure([*view.requirements, "pip", "setuptools", "wheel"])
    boot = view.site.parent / "boot"
    boot.mkdir(exist_ok=True)
    (boot / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    config = boot / "view.json"
    config.write_text(json.dumps({"repo": str(ROOT), "blocked": blocked_modules(installed)}))
    plugins_off = []
    for ep in metadata.entry_points(group="pytest11"):
        if ep.dist is not None and canonicalize_name(ep.dist.name) not in installed:
            plugins_off += ["-p", f"no:{ep.name}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env.update(view.env)
    env.update(PYTHONPATH=f"{boot}{os.pathsep}{view.site}", CLIP_INDEX_DOCKER_VIEW=str(config),
               PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *command[1:], *plugins_off, *(extra or [])],
                          cwd=view.workdir, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
