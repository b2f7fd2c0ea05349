"""clip-index: Kubeflow Pipelines (KFP v2) components and pipelines that turn an image-URL dataset
into a CLIP search index, and the tools to query and serve it."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ClipIndex", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `import clip_index` must not pull in faiss and torch
    if name == "ClipIndex":
        from clip_index.search.searcher import ClipIndex

        return ClipIndex
    raise AttributeError(name)
