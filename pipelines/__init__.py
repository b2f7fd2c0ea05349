"""The pipelines' registry, used by compile.py, the CLI and the tests: name → factory of a KFP
pipeline from `PipelineSettings`. compile.py writes one YAML per entry. Vertex AI takes
"clip-index"; the Kubeflow variant is a two-document YAML that aiplatform.PipelineJob refuses.
"""

from collections.abc import Callable
from typing import Any

from clip_index.pipelines.clip_index import make_index_pipeline
from clip_index.pipelines.settings import DEFAULT_IMAGE_REPO, PipelineSettings, TaskHook

__all__ = ["DEFAULT_IMAGE_REPO", "PIPELINES", "PipelineSettings", "TaskHook",
           "make_index_pipeline"]


def _retrieve(settings: PipelineSettings) -> Any:
    from clip_index.pipelines.retrieve import make_retrieve_pipeline

    return make_retrieve_pipeline(settings)


def _export(settings: PipelineSettings) -> Any:
    from clip_index.pipelines.export import make_export_pipeline

    return make_export_pipeline(settings)


def _kubeflow(settings: PipelineSettings) -> Any:
    """The Kubeflow variant (needs kfp-kubernetes, the `cloud` extra)."""
    from clip_index.pipelines.kubeflow import make_kubeflow_pipeline

    return make_kubeflow_pipeline(settings)


PIPELINES: dict[str, Callable[[PipelineSettings], Any]] = {
    "clip-index": make_index_pipeline,
    "clip-index-kubeflow": _kubeflow,
    "clip-index-retrieve": _retrieve,
    "clip-index-export": _export,
}
