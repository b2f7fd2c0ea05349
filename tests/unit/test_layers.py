"""The library's layers: no module imports one of a higher layer or of a sibling stage, and no two
modules import each other, however indirectly. Every import counts, lazy ones inside functions
included: a lazy import hides a cycle from Python, not from the reader.

What may import what (docs/architecture.md draws it):

    cli, launch/             anything below (and the package's __init__, which offers ClipIndex)
    pipelines/               components/ and shared modules
    components/              the stages and shared modules
    publish/                 search/ (the report's sample queries) and what search/ may import
    search/                  index/, embed/ (query encoding), shared modules
    index/                   shared modules
    load/ download/ embed/   shared modules
    shared modules           one another only
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the installed names of the three source folders (pyproject's package-dir)
SOURCES = {
    "clip_index": ROOT / "clip_index",
    "clip_index.components": ROOT / "components",
    "clip_index.pipelines": ROOT / "pipelines",
}
SHARED = "shared"
STAGES = {"load", "download", "embed", "index", "publish", "search"}
ALLOWED: dict[str, set[str]] = {
    "cli": {"launch", "pipelines", "components", *STAGES, SHARED},
    "launch": {"pipelines", "components", *STAGES, SHARED},
    "pipelines": {"components", SHARED},
    "components": {*STAGES, SHARED},
    "search": {"index", "embed", SHARED},
    "publish": {"search", "index", "embed", SHARED},
    "index": {SHARED},
    "load": {SHARED},
    "download": {SHARED},
    "embed": {SHARED},
    SHARED: set(),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a module of ours, never a name inside one)
    where: str  # file:line


def modules() -> dict[str, Path]:
    """Every module of ours by its dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    """The layer of a module: cli, launch, pipelines, components, a stage, or shared."""
    parts = module.split(".")
    if len(parts) == 1:
        return "cli"  # the package's __init__: a face, like the CLI (`from clip_index import ...`)
    head = parts[1]
    if head in ALLOWED and head != SHARED:
        return head
    return SHARED  # config, schema, io, stats, status, limits, flags, units


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that `name` (a module or a name inside one) lives in, or None."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(known: dict[str, Path]) -> list[Import]:
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                # `from a import b` imports the module a.b when there is one
                names = [f"{base}.{alias.name}" for alias in node.names]
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            for name in names:
                target = resolve(name, known)
                if target is not None and target != module:
                    found.append(Import(module, target, where))
    return found


def test_every_module_is_seen() -> None:
    known = modules()
    assert "clip_index.cli" in known and "clip_index.components.load_dataset" in known
    assert {layer(module) for module in known} == set(ALLOWED)


def against_layers(found: list[Import]) -> list[str]:
    """Each import from a module to one of a higher layer or a sibling stage."""
    bad = []
    for item in found:
        source, target = layer(item.source), layer(item.target)
        if source != target and target not in ALLOWED[source]:
            bad.append(f"{item.where}: {item.source} ({source}) imports {item.target} ({target})")
    return sorted(bad)


def cycles_of(found: list[Import]) -> list[str]:
    """Each import cycle, once, from its smallest module, with the file:line of every hop."""
    edges: dict[str, dict[str, str]] = {}
    for item in found:
        edges.setdefault(item.source, {}).setdefault(item.target, item.where)
    cycles = []
    for start in sorted(edges):
        # depth-first search for a path back to start through modules sorted after it, so that
        # each cycle is reported once, from its smallest module
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for target in sorted(edges.get(module, {})):
                if target == start:
                    hops = [*path, start]
                    cycles.append(" -> ".join(
                        f"{a} ({edges[a][b]})" for a, b in zip(hops, hops[1:], strict=False))
                        + f" -> {start}")
                elif target > start and target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    return cycles


def test_no_import_reaches_up_or_across() -> None:
    bad = against_layers(imports(modules()))
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    cycles = cycles_of(imports(modules()))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_catch_an_upward_a_sideways_import_and_a_cycle() -> None:
    """The two checks on imports made up for the purpose: each breaking one is named."""
    up = Import("clip_index.config", "clip_index.publish.hub", "clip_index/config.py:9")
    across = Import("clip_index.index.build", "clip_index.embed.models", "x.py:3")
    down = Import("clip_index.search.searcher", "clip_index.index.layout", "y.py:1")
    assert against_layers([up, across, down]) == [
        "clip_index/config.py:9: clip_index.config (shared) imports clip_index.publish.hub "
        "(publish)",
        "x.py:3: clip_index.index.build (index) imports clip_index.embed.models (embed)"]
    loop = [Import("clip_index.index.build", "clip_index.index.twostage", "b.py:5"),
            Import("clip_index.index.twostage", "clip_index.index.build", "t.py:7")]
    assert cycles_of(loop) == ["clip_index.index.build (b.py:5) -> clip_index.index.twostage "
                               "(t.py:7) -> clip_index.index.build"]
    assert cycles_of([down]) == []
