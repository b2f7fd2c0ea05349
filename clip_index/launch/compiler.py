"""Compile every registered pipeline to a KFP v2 YAML (the Vertex AI / Kubeflow template)."""

from __future__ import annotations

import logging
import os
import tempfile

from kfp import compiler

from clip_index.launch import spec_check
from clip_index.pipelines import PIPELINES, PipelineSettings

log = logging.getLogger(__name__)


def compile_pipeline(name: str, output_dir: str, settings: PipelineSettings) -> str:
    """Compile pipeline `name` to ``output_dir/<name>.yaml``; return the path. The template is
    written only if it passes the spec checker (`spec_check`: the backends' rules), so no
    template that Vertex AI or Kubeflow would refuse or mishandle is ever shipped."""
    if name not in PIPELINES:
        raise ValueError(f"pipeline {name!r}: expected one of {sorted(PIPELINES)}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{name}.yaml")
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=f".{name}-") as tmp:
        draft = os.path.join(tmp, f"{name}.yaml")
        compiler.Compiler().compile(PIPELINES[name](settings), package_path=draft)
        spec_check.require_valid(draft)
        os.replace(draft, path)
    log.info("compiled %s → %s (spec check passed)", name, path)
    return path


def compile_all(output_dir: str, settings: PipelineSettings) -> list[str]:
    """Compile every pipeline in the registry; raises on the first failure."""
    settings.validate()
    return [compile_pipeline(name, output_dir, settings) for name in sorted(PIPELINES)]
