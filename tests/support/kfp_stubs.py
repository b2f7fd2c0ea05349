"""Lightweight components for tests that run a single step through kfp.local.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)"""

from kfp.dsl import Dataset, Output


def written(data: Output[Dataset]) -> None:
    """Stands for the write step's record (an upstream artifact the index step depends on)."""
    with open(data.path, "w") as f:
        f.write("write step record")


def index_only_pipeline(build_index: object, index_key: str, recall_queries: int,
                        **params: object) -> object:
    """A pipeline of `written` → the given build_index component (for one-step local runs);
    `params`: further build_index arguments."""
    from kfp import dsl

    written_component = dsl.component(written, base_image="x/cpu:1", install_kfp_package=False)

    @dsl.pipeline(name="index-only")
    def index_only(output_dir: str) -> None:
        data = written_component()
        build_index(data=data.outputs["data"], output_dir=output_dir,  # type: ignore[operator]
                    index_key=index_key, recall_queries=recall_queries, **params)

    return index_only
