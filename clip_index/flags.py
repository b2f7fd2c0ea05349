"""Command-line flags generated from the one place each setting is defined: step configs'
dataclass fields and pipeline parameters (`PipelineSettings`' flags live in
clip_index/launch/settings_flags.py); each flag's help is the text
written once in the component docstrings' ``Args:`` (what the Vertex AI UI shows), or for a
config field that no component takes, in its config class's ``Attributes:``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import inspect
import typing
from pathlib import Path
from typing import Any

# The step configs' components, by config class name: their Args document the config's fields.
CONFIG_COMPONENTS: dict[str, tuple[str, ...]] = {
    "LoadConfig": ("load_dataset",), "DownloadConfig": ("download_images",),
    "EmbedConfig": ("embed_images",), "IndexConfig": ("build_index",),
    "RetrieveConfig": ("load_queries", "retrieve_matches"), "PublishConfig": ("publish_to_hub",),
}
# The index pipeline's components in pipeline order: a pipeline parameter takes the help of
# the first one with a parameter of its name (each setting has one name everywhere).
PIPELINE_COMPONENTS = ("load_dataset", "download_images", "embed_images", "write_embeddings",
                       "build_index", "report", "publish_to_hub")


@functools.lru_cache(maxsize=1)
def component_docs() -> dict[str, dict[str, str]]:
    """component function name → {parameter: description} from its docstring's Args. The
    component modules are parsed, not imported: importing them imports kfp (half a second at
    the start of every step command)."""
    import docstring_parser

    docs: dict[str, dict[str, str]] = {}
    spec = importlib.util.find_spec("clip_index.components")
    assert spec is not None and spec.submodule_search_locations
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
                    parsed = docstring_parser.parse(ast.get_docstring(node) or "")
                    docs[node.name] = {p.arg_name: _one_line(p.description) for p in
                                       parsed.params if p.description}
    return docs


def config_docs(cls: type) -> dict[str, str]:
    """{field: help} for a step config: its component's Args, then the class's Attributes."""
    import docstring_parser

    docs = {p.arg_name: _one_line(p.description)
            for p in docstring_parser.parse(cls.__doc__ or "").params if p.description}
    for component in CONFIG_COMPONENTS.get(cls.__name__, ()):
        docs.update(component_docs().get(component, {}))
    return docs


def pipeline_docs(names: typing.Iterable[str]) -> dict[str, str]:
    """{pipeline parameter: help} from the index pipeline's components."""
    comps = component_docs()
    docs = {}
    for name in names:
        for c in PIPELINE_COMPONENTS:
            if name in comps.get(c, {}):
                docs[name] = comps[c][name]
                break
    return docs


def step_help(component: str, param: str) -> str:
    """The help of a step command's own flag (its input/output folders) from its component."""
    return component_docs()[component][param]


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def flag(name: str) -> str:
    """``max_image_bytes`` → ``--max-image-bytes``."""
    return "--" + name.replace("_", "-")


def add_typed_flags(parser: argparse.ArgumentParser, params: dict[str, tuple[Any, Any]],
                    docs: dict[str, str] | None = None) -> None:
    """One flag per (type, default) entry, its help from `docs` (+ the default); a default of
    `inspect.Parameter.empty` is required; bools are switches (`--allow-private-networks`)
    with a `--no-` form. A name missing from `docs` gets no help (tests/unit/test_flags.py
    fails on it)."""
    for name, (kind, default) in params.items():
        required = default is inspect.Parameter.empty or default is dataclasses.MISSING
        text = (docs or {}).get(name)
        if text is not None:
            text = text + (" (required)" if required else f" (default: {default!r})")
            text = text.replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=False if required else default, help=text)
            continue
        parser.add_argument(flag(name), dest=name, type=kind, required=required,
                            default=None if required else default, help=text)


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of a step config, with its documented help."""
    add_typed_flags(parser, config_params(cls), config_docs(cls))


def config_params(cls: type) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)}


def pipeline_params(func: Any) -> dict[str, tuple[Any, Any]]:
    return {n: (p.annotation, p.default) for n, p in inspect.signature(func).parameters.items()}


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
