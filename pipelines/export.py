"""The export pipeline: a file of prompts (texts, image paths or embeddings) → every match above
a similarity threshold in a published index, exact, as parquet + a DataComp uid subset (.npy)
+ a JSON summary, in one task (one scan of the stored vectors serves every prompt)."""

from typing import Any

from kfp import dsl

from clip_index.components import make_components


def make_export_pipeline(settings: Any = None) -> Any:
    """export: export_matches, on the CPU image with the index step's CPU and memory."""
    from clip_index.pipelines.settings import PipelineSettings

    settings = settings or PipelineSettings()
    settings.validate()
    e = make_components(settings.cpu_image, settings.gpu_image)

    @dsl.pipeline(
        name="clip-index-export",
        description="Prompts → every match above a similarity threshold in a clip-index "
                    "(exact) → parquet + DataComp uid subset.",
    )
    def clip_index_export(
        index_dir: str,
        prompts: str,
        threshold: float,
        prompt_kind: str = "auto",
        query_column: str = "text",
        embedding_column: str = "embedding",
        max_per_prompt: int = 0,
        union: bool = False,
        block_rows: int = 32768,
        batch_size: int = 256,
    ) -> None:
        export = e.export_matches(
            index_dir=index_dir, prompts=prompts, threshold=threshold, prompt_kind=prompt_kind,
            query_column=query_column, embedding_column=embedding_column,
            max_per_prompt=max_per_prompt, union=union, block_rows=block_rows,
            batch_size=batch_size,
        ).set_display_name("Export matches")
        export.set_cpu_limit(settings.index_cpu).set_memory_limit(settings.index_memory)
        export.set_caching_options(False)  # the index folder may change under the same path

    return clip_index_export
