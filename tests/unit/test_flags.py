"""Every flag of `run`, `compile`, `submit` and the step commands has help, and that help is
the text written once in the component docstrings (what Vertex AI shows) or, for a config
field no component takes, in the config class's Attributes."""

from __future__ import annotations

import argparse

import pytest

from clip_index.cli import build_parser
from clip_index.flags import component_docs, config_docs

COMMANDS = ("run", "compile", "submit", "load", "download", "embed", "write", "index",
            "retrieve", "export", "publish", "query", "demo", "serve")


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help(command: str) -> None:
    actions = [a for a in subparser(command)._actions if not isinstance(a, argparse._HelpAction)]
    assert actions
    missing = [a.option_strings or a.dest for a in actions if not (a.help or "").strip()]
    assert missing == []


def test_run_help_is_the_component_docstring_with_the_default() -> None:
    helps = {a.dest: a.help for a in subparser("run")._actions}
    download = component_docs()["download_images"]
    assert helps["timeout_s"] == download["timeout_s"] + " (default: 20.0)"
    assert "seconds" in helps["timeout_s"]  # the unit is part of the one text
    assert helps["download_retries"] == download["download_retries"] + " (default: 2)"
    assert helps["hub_repo_id"].startswith(component_docs()["publish_to_hub"]["hub_repo_id"])
    assert helps["dataset"].endswith("(required)")


def test_config_only_fields_take_the_config_attributes() -> None:
    from clip_index.config import DownloadConfig

    docs = config_docs(DownloadConfig)
    assert "decompression bombs" in docs["max_image_pixels"]
    helps = {a.dest: a.help for a in subparser("download")._actions}
    assert helps["max_image_pixels"].startswith(docs["max_image_pixels"])
    assert helps["max_image_bytes"].startswith(component_docs()["download_images"][
        "max_image_bytes"])
