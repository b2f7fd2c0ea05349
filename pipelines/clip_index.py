"""The clip-index pipeline (load → download → embed → write → index → report → publish), built
by a factory from `PipelineSettings`, since KFP fixes images, GPUs and loop widths at compile
time; run-time choices are pipeline parameters. The Kubeflow variant (`kubeflow.py`) is the
same pipeline with kfp-kubernetes settings added through the `task_hook`.

Its shape is the one the backends accept (`clip_index.launch.spec_check` holds their rules):
typed loop items, no list of artifacts into a nested pipeline, no loop over artifacts, at most
100 artifacts into one task, and each task given only the artifacts it reads (Kubeflow's
launcher copies every input artifact into the pod).
"""

from typing import Any

from kfp import dsl

from clip_index.components import make_components
from clip_index.pipelines.settings import PipelineSettings, TaskHook


def make_index_pipeline(settings: PipelineSettings | None = None,
                        task_hook: TaskHook | None = None) -> Any:
    """The clip-index pipeline: load → ParallelFor(embed group) [ParallelFor(download unit) →
    embed the group's Collected images] → write the Collected embeddings → index → report →
    (when hub_repo_id is set) publish to the Hugging Face Hub. Both loop widths are
    compile-time settings (one task per work unit, a unit = a range of shards); no task
    collects more than one artifact per iteration of one loop. `task_hook(name, task)` may add
    platform settings to the download/embed tasks."""
    settings = settings or PipelineSettings()
    settings.validate()
    c = make_components(settings.cpu_image, settings.gpu_image)

    def _retry_and_cache(task: Any) -> None:
        task.set_retry(num_retries=settings.task_retries, backoff_duration=f"{settings.backoff_s}s",
                       backoff_factor=settings.backoff_factor,
                       backoff_max_duration=f"{settings.max_backoff_s}s")
        # a re-submitted run reuses every finished unit (same inputs → cache hit), and a retried
        # task skips the shards it finished; `clip-index submit --no-cache` turns caching off
        task.set_caching_options(True)

    @dsl.pipeline(
        name="clip-index",
        description="Image-URL dataset → CLIP embeddings → faiss index, queryable by text/image.",
    )
    def clip_index_pipeline(
        dataset: str,
        output_dir: str,
        id_column: str = "uid",
        url_column: str = "url",
        caption_column: str = "text",
        extra_columns: str = "auto",
        limit: int = 0,
        shard_size: int = 10000,
        image_size: int = 256,
        resize_mode: str = "keep_ratio",
        timeout_s: float = 20.0,
        download_retries: int = 2,
        concurrency: int = 512,
        per_host_concurrency: int = 16,
        min_image_size: int = 0,
        max_aspect_ratio: float = 0.0,
        max_image_bytes: int = 33554432,
        allow_private_networks: bool = False,
        respect_opt_out: bool = True,
        max_failure_rate: float = 1.0,
        thumbnail_px: int = 128,
        model: str = "ViT-B-32",
        pretrained: str = "laion2b_s34b_b79k",
        batch_size: int = 0,
        dtype: str = "float32",
        seed: int = 0,
        precision: str = "auto",
        max_index_memory_usage: str = "4G",
        current_memory_available: str = "16G",
        max_index_query_time_ms: float = 10.0,
        index_key: str = "",
        hub_repo_id: str = "",
        hub_private: bool = False,
        hub_revision: str = "",
        hub_token_secret: str = "",
        target_recall: float = 0.95,
        recall_queries: int = 1000,
        should_be_memory_mappable: bool = False,
        dataset_fingerprint: str = "",
        two_stage_min_vectors: int = 250_000,
        rerank_dtype: str = "float16",
    ) -> None:
        load = c.load_dataset(
            dataset=dataset, id_column=id_column, url_column=url_column,
            caption_column=caption_column, limit=limit, shard_size=shard_size,
            dataset_fingerprint=dataset_fingerprint,  # the cache key follows the content
            extra_columns=extra_columns,
        ).set_display_name("Load dataset")
        load.set_caching_options(True)
        urls = load.outputs["urls"]
        # G embed groups, each P download units feeding its own embed task. Both loops are
        # over lists fixed here (the widths), never over a task's output: every task computes
        # its own shards from the load manifest (clip_index.units), so each embed task's input
        # is its own group's P artifacts, its cache key only theirs, and its GPU starts when
        # its group's downloads are done while other groups may still be downloading.
        # no `name=` on the loops: KFP backends before 2.16 look a loop up by its display name
        # where its outputs are collected and fail with "cannot find producer task"
        # (kubeflow/pipelines#13239; spec_check's rule loop-name)
        with dsl.ParallelFor(list(range(settings.embed_parallelism)),
                             parallelism=settings.embed_parallelism) as group:
            with dsl.ParallelFor(list(range(settings.parts)), parallelism=settings.parts) as part:
                download = c.download_images(
                    urls=urls, group=group, part=part, groups=settings.embed_parallelism,
                    parts=settings.parts, image_size=image_size, resize_mode=resize_mode,
                    timeout_s=timeout_s, download_retries=download_retries,
                    concurrency=concurrency, per_host_concurrency=per_host_concurrency,
                    min_image_size=min_image_size, max_aspect_ratio=max_aspect_ratio,
                    max_image_bytes=max_image_bytes,
                    allow_private_networks=allow_private_networks,
                    respect_opt_out=respect_opt_out, max_failure_rate=max_failure_rate,
                    thumbnail_px=thumbnail_px,
                ).set_display_name("Download images")
                download.set_cpu_limit(settings.download_cpu).set_memory_limit(
                    settings.download_memory)
                _retry_and_cache(download)
                if task_hook is not None:
                    task_hook("download", download)
            embed = c.embed_images(
                images=dsl.Collected(download.outputs["images"]), model=model,
                pretrained=pretrained, batch_size=batch_size, dtype=dtype, seed=seed,
                precision=precision,
                device="cuda" if settings.gpu_count else "auto",  # a GPU task requires CUDA
            ).set_display_name("Embed images")
            embed.set_cpu_limit(settings.embed_cpu).set_memory_limit(settings.embed_memory)
            if settings.gpu_count:
                embed.set_accelerator_type(settings.gpu_type).set_accelerator_limit(
                    settings.gpu_count)
            _retry_and_cache(embed)
            if task_hook is not None:
                task_hook("embed", embed)
        write = c.write_embeddings(
            embeddings=dsl.Collected(embed.outputs["embeddings"]), output_dir=output_dir,
        ).set_display_name("Write embeddings")
        write.set_cpu_limit(settings.write_cpu).set_memory_limit(settings.write_memory)
        index = c.build_index(
            data=write.outputs["data"], output_dir=output_dir,
            max_index_memory_usage=max_index_memory_usage,
            current_memory_available=current_memory_available,
            max_index_query_time_ms=max_index_query_time_ms, index_key=index_key,
            target_recall=target_recall, recall_queries=recall_queries,
            should_be_memory_mappable=should_be_memory_mappable,
            two_stage_min_vectors=two_stage_min_vectors, rerank_dtype=rerank_dtype,
        ).set_display_name("Build index")
        index.set_cpu_limit(settings.index_cpu).set_memory_limit(settings.index_memory)
        report = c.report(output_dir=output_dir, index=index.outputs["index"])
        report.set_display_name("Report")
        for task in (write, index, report):  # they write to output_dir: a cache hit would not
            task.set_caching_options(False)
        with dsl.If(hub_repo_id != "", name="publish-to-hub"):
            publish = c.publish_to_hub(
                output_dir=output_dir, report=report.outputs["report"], hub_repo_id=hub_repo_id,
                hub_private=hub_private, hub_revision=hub_revision, source=dataset,
                hub_token_secret=hub_token_secret,
            ).set_display_name("Publish to the Hugging Face Hub")
            publish.set_caching_options(False)

    return clip_index_pipeline
