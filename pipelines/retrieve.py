"""The retrieve pipeline: a Dataset of prompts (or embeddings) → its top matches in a published
index → optionally the matched images, downloaded by the download step (a fine-tuning set built
from an index, the way the reference's users did it with clip-retrieval)."""

from typing import Any

from kfp import dsl

from clip_index.components import make_components


def make_retrieve_pipeline(settings: Any = None) -> Any:
    """retrieve: load_queries → retrieve_matches → [If download_matches: ParallelFor(download
    unit)], the index pipeline's download loop of `download_parallelism` units, in one group."""
    from clip_index.pipelines.settings import PipelineSettings

    settings = settings or PipelineSettings()
    settings.validate()
    c = make_components(settings.cpu_image, settings.gpu_image)
    width = settings.download_parallelism

    @dsl.pipeline(
        name="clip-index-retrieve",
        description="Prompts or embeddings → top matches in a clip-index → matched images.",
    )
    def clip_index_retrieve(
        queries: str,
        index_dir: str,
        query_column: str = "text",
        embedding_column: str = "embedding",
        num_images: int = 10,
        deduplicate: bool = True,
        batch_size: int = 256,
        mmap: bool = False,
        shard_size: int = 10000,
        filters: str = "",
        download_matches: bool = False,
        image_size: int = 256,
        resize_mode: str = "keep_ratio",
        timeout_s: float = 20.0,
        download_retries: int = 2,
        concurrency: int = 512,
        allow_private_networks: bool = False,
        max_failure_rate: float = 1.0,
    ) -> None:
        load = c.load_queries(source=queries, query_column=query_column,
                              embedding_column=embedding_column).set_display_name("Load queries")
        retrieve = c.retrieve_matches(
            queries=load.outputs["queries"], index_dir=index_dir, num_images=num_images,
            deduplicate=deduplicate, batch_size=batch_size, mmap=mmap, shard_size=shard_size,
            filters=filters,
        ).set_display_name("Retrieve matches")
        retrieve.set_cpu_limit(settings.index_cpu).set_memory_limit(settings.index_memory)
        for task in (load, retrieve):  # the index folder may change under the same path
            task.set_caching_options(False)
        matched = download_matches == True  # noqa: E712 (a pipeline channel, not a bool)
        with dsl.If(matched, name="download-matches"), \
                dsl.ParallelFor(list(range(width)), parallelism=width) as part:
            download = c.download_images(
                urls=retrieve.outputs["urls"], group=0, part=part, groups=1, parts=width,
                image_size=image_size, resize_mode=resize_mode, timeout_s=timeout_s,
                download_retries=download_retries, concurrency=concurrency,
                allow_private_networks=allow_private_networks,
                max_failure_rate=max_failure_rate,
            ).set_display_name("Download matched images")
            download.set_cpu_limit(settings.download_cpu).set_memory_limit(
                settings.download_memory)
            download.set_retry(num_retries=settings.task_retries,
                               backoff_duration=f"{settings.backoff_s}s",
                               backoff_factor=settings.backoff_factor,
                               backoff_max_duration=f"{settings.max_backoff_s}s")
            download.set_caching_options(False)  # the matches change with the index

    return clip_index_retrieve
