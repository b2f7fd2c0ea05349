"""KFP component declarations, one module per component, named after it: thin bodies that call
one clip_index library function each (bodies are shipped to the worker as source, so each
imports what it uses inside, and holds no logic beyond building a config and recording
artifact metadata).

`make_components` turns the plain functions into KFP components bound to the container images:
the embed step on the GPU image, the rest on the CPU image.
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl

from clip_index.components.build_index import build_index
from clip_index.components.download_images import download_images
from clip_index.components.embed_images import embed_images
from clip_index.components.export_matches import export_matches
from clip_index.components.load_dataset import load_dataset
from clip_index.components.load_queries import load_queries
from clip_index.components.publish_to_hub import publish_to_hub
from clip_index.components.report import report
from clip_index.components.retrieve_matches import retrieve_matches
from clip_index.components.write_embeddings import write_embeddings

__all__ = ["Components", "build_index", "download_images", "embed_images", "export_matches",
           "load_dataset",
           "load_queries", "make_components", "publish_to_hub", "report", "retrieve_matches",
           "write_embeddings"]


@dataclass(frozen=True)
class Components:
    """Every pipeline's components, bound to container images."""

    load_dataset: Any
    download_images: Any
    embed_images: Any
    write_embeddings: Any
    build_index: Any
    report: Any
    publish_to_hub: Any
    load_queries: Any
    retrieve_matches: Any
    export_matches: Any


def make_components(cpu_image: str, gpu_image: str) -> Components:
    """KFP components for every step: the embed step on `gpu_image`, the rest on `cpu_image`."""

    def on(image: str, func: Any) -> Any:
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return Components(
        load_dataset=on(cpu_image, load_dataset),
        download_images=on(cpu_image, download_images),
        embed_images=on(gpu_image, embed_images),
        write_embeddings=on(cpu_image, write_embeddings),
        build_index=on(cpu_image, build_index),
        report=on(cpu_image, report),
        publish_to_hub=on(cpu_image, publish_to_hub),
        load_queries=on(cpu_image, load_queries),
        retrieve_matches=on(cpu_image, retrieve_matches),
        export_matches=on(cpu_image, export_matches),
    )
