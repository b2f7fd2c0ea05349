"""KFP pipeline definitions and the registry used by compile.py, the CLI and the tests.

A pipeline is built by a factory from `PipelineSettings` (images, GPU, parallelism, per-task CPU
and memory, retries), since KFP fixes those at compile time; run-time choices are pipeline
parameters. The Kubeflow variant (`kubeflow.py`) is the same pipeline with kfp-kubernetes
settings added through the `task_hook`.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Input

from clip_index.components import make_components
from clip_index.embed.gpus import GPU_TYPES, check_gpu  # noqa: F401 (Vertex types + counts)
from clip_index.limits import MAX_LOOP_WIDTH

DEFAULT_IMAGE_REPO = "us-docker.pkg.dev/PROJECT/clip-index"
# Kubernetes quantities as KFP accepts them: CPU "8", "0.5", "500m"; memory "32G", "512Mi".
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$")
# (task name, task) → None: called on the download and embed tasks, e.g. to add kfp-kubernetes
# node selectors; the task names are "download" and "embed".
TaskHook = Callable[[str, Any], None]


@dataclass(frozen=True)
class PipelineSettings:
    """Compile-time settings: container images, the embed step's GPU, the fan-out limit.

    gpu_type / gpu_count: the embed task's accelerator (Vertex AI type names; count 0 = CPU).
    download_parallelism: download tasks, each streaming its own share of the shards: the
        width of the download loop (CPU quota: `download_parallelism × download_cpu` vCPUs).
    embed_parallelism: embed tasks, each streaming its share of the shards through one model:
        the width of the embed loop; `embed_parallelism × gpu_count` GPUs are in use, so this
        is the knob that fits a run into the project's GPU quota.
    Both widths are fixed here, at compile time, never derived from the dataset: a run of 480
    rows and one of 12.8M (1,280 shards) have the same loops, one task per work unit, each
    unit a range of shards (the unit of resume stays the shard). At most `MAX_LOOP_WIDTH`
    (100): every loop's outputs are collected, and Vertex AI refuses more artifacts.
    *_cpu / *_memory: per-task limits (Kubernetes quantities: "8", "500m"; "32G", "16Gi").
    retries: extra attempts of a failed download or embed task, the first after `backoff_s`
        seconds, each next one `backoff_factor` times later, at most `max_backoff_s`.
    """

    cpu_image: str = f"{DEFAULT_IMAGE_REPO}/clip-index-cpu:dev"
    gpu_image: str = f"{DEFAULT_IMAGE_REPO}/clip-index-gpu:dev"
    gpu_type: str = "NVIDIA_L4"
    gpu_count: int = 1
    download_parallelism: int = 32
    embed_parallelism: int = 8
    # Limits become Kubernetes requests: each fits the allocatable CPU/memory (after GKE's
    # reservations and daemon pods) of the node shape beside it (README "Node shapes").
    embed_cpu: str = "6"  # g2-standard-8 + 1 L4; n1-standard-8 + 1 T4
    embed_memory: str = "24G"
    download_cpu: str = "7"  # e2-/n2-standard-8
    download_memory: str = "16G"
    # the write task makes a thumbnail of every image (~3 ms of CPU each: 9.2M images are ~7
    # core-hours), in a process per core
    write_cpu: str = "14"  # n2-standard-16
    write_memory: str = "48G"
    index_cpu: str = "14"  # n2-standard-16
    index_memory: str = "48G"
    retries: int = 2
    backoff_s: int = 60
    backoff_factor: float = 2.0
    max_backoff_s: int = 3600
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("cpu_image", "gpu_image"):
            image = getattr(self, name)
            tag = image.rsplit("/", 1)[-1]
            if ":" not in tag and "@" not in image:
                raise ValueError(f"{name}={image!r}: expected an image with a tag or digest")
            if tag.endswith(":latest"):
                raise ValueError(f"{name}={image!r}: ':latest' is not reproducible; pin a tag")
        if self.gpu_count < 0:
            raise ValueError(f"gpu_count={self.gpu_count}: expected an integer >= 0")
        check_gpu(self.gpu_type, self.gpu_count)
        for name in ("download_parallelism", "embed_parallelism"):
            width = getattr(self, name)
            if not 1 <= width <= MAX_LOOP_WIDTH:
                raise ValueError(
                    f"{name}={width}: expected 1 to {MAX_LOOP_WIDTH} tasks (--"
                    f"{name.replace('_', '-')}): each loop's outputs are collected by a later "
                    f"step, and Vertex AI refuses a task input of more than {MAX_LOOP_WIDTH} "
                    "artifacts; more tasks are not needed either, since each streams many shards")
        for step in ("download", "embed", "write", "index"):
            cpu, memory = getattr(self, f"{step}_cpu"), getattr(self, f"{step}_memory")
            if not _CPU.match(cpu) or float(cpu.rstrip("m") or 0) <= 0:
                raise ValueError(f"{step}_cpu={cpu!r}: expected a CPU count like '8' or '500m'")
            if not _MEMORY.match(memory) or float(re.sub("[A-Za-z]", "", memory)) <= 0:
                raise ValueError(f"{step}_memory={memory!r}: expected a size like '32G' or "
                                 "'16Gi'")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries}: expected an integer >= 0")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"backoff_s={self.backoff_s}, max_backoff_s={self.max_backoff_s}: "
                             "expected 0 <= backoff_s <= max_backoff_s")
        if self.backoff_factor < 1:
            raise ValueError(f"backoff_factor={self.backoff_factor}: expected a factor >= 1")


def make_index_pipeline(settings: PipelineSettings = PipelineSettings(),
                        task_hook: TaskHook | None = None) -> Any:
    """The clip-index pipeline: load → plan download units → ParallelFor(download unit) →
    [embed-units: plan embed units → ParallelFor(embed unit)] → write → index → report →
    (when hub_repo_id is set) publish to the Hugging Face Hub. Each loop's width is a
    compile-time setting (one task per work unit, a unit = a range of shards), and each
    collected input holds one artifact per unit. `task_hook(name, task)` may add platform
    settings to the download/embed tasks."""
    settings.validate()
    c = make_components(settings.cpu_image, settings.gpu_image)

    def _retry_and_cache(task: Any) -> None:
        task.set_retry(num_retries=settings.retries, backoff_duration=f"{settings.backoff_s}s",
                       backoff_factor=settings.backoff_factor,
                       backoff_max_duration=f"{settings.max_backoff_s}s")
        # a re-submitted run reuses every finished unit (same inputs → cache hit), and a retried
        # task skips the shards it finished; `clip-index submit --no-cache` turns caching off
        task.set_caching_options(True)

    @dsl.pipeline(name="embed-units", description="Embed every shard, one task per work unit.")
    def embed_units(
        images: Input[list[Dataset]],
        units: list,
        model: str,
        pretrained: str,
        batch_size: int,
        dtype: str,
        seed: int,
        precision: str,
    ) -> list[Dataset]:
        with dsl.ParallelFor(units, parallelism=settings.embed_parallelism,
                             name="embed-units") as unit:
            embed = c.embed_images(
                images=images, unit=unit, model=model, pretrained=pretrained,
                batch_size=batch_size, dtype=dtype, seed=seed, precision=precision,
                device="cuda" if settings.gpu_count else "auto",  # a GPU task requires CUDA
            ).set_display_name("Embed images")
            embed.set_cpu_limit(settings.embed_cpu).set_memory_limit(settings.embed_memory)
            if settings.gpu_count:
                embed.set_accelerator_type(settings.gpu_type).set_accelerator_limit(
                    settings.gpu_count)
            _retry_and_cache(embed)
            if task_hook is not None:
                task_hook("embed", embed)
        return dsl.Collected(embed.outputs["embeddings"])  # one artifact per embed unit

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
            fingerprint=dataset_fingerprint,  # the cache key follows the content (issue 16)
        ).set_display_name("Load dataset")
        load.set_caching_options(True)
        urls = load.outputs["urls"]
        download_units = c.plan_units(urls=urls, max_units=settings.download_parallelism)
        download_units.set_display_name("Plan download units")
        # planned beside the downloads, not after them: one task start-up less on the path
        embed_plan = c.plan_units(urls=urls, max_units=settings.embed_parallelism)
        embed_plan.set_display_name("Plan embed units")
        with dsl.ParallelFor(download_units.output, parallelism=settings.download_parallelism,
                             name="download-units") as unit:
            download = c.download_images(
                urls=urls, unit=unit, image_size=image_size,
                resize_mode=resize_mode, timeout_s=timeout_s, retries=download_retries,
                concurrency=concurrency, per_host_concurrency=per_host_concurrency,
                min_image_size=min_image_size, max_aspect_ratio=max_aspect_ratio,
                max_image_bytes=max_image_bytes, allow_private_networks=allow_private_networks,
                respect_opt_out=respect_opt_out, max_failure_rate=max_failure_rate,
            ).set_display_name("Download images")
            download.set_cpu_limit(settings.download_cpu).set_memory_limit(
                settings.download_memory)
        # The embed loop starts when every download unit is done: no GPU is held (or billed)
        # while the images are fetched, and each embed task keeps its GPU busy from its first
        # shard to its last. It is a pipeline of its own because KFP accepts a collected list
        # inside a loop only as a pipeline input (a Collected consumed in a sibling loop does
        # not compile).
        embedded = embed_units(
            images=dsl.Collected(download.outputs["images"]), units=embed_plan.output,
            model=model,
            pretrained=pretrained, batch_size=batch_size, dtype=dtype, seed=seed,
            precision=precision,
        ).set_display_name("Embed units")
        for plan in (download_units, embed_plan):
            plan.set_caching_options(True)
        _retry_and_cache(download)
        if task_hook is not None:
            task_hook("download", download)
        write = c.write_embeddings(
            embeddings=embedded.output, urls=urls,
            images=dsl.Collected(download.outputs["images"]), output_dir=output_dir,
            thumbnail_px=thumbnail_px,
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
        report = c.report(output_dir=output_dir, index=index.outputs["index"],
                          images=dsl.Collected(download.outputs["images"]))
        report.set_display_name("Report")
        for task in (write, index, report):  # they write to output_dir: a cache hit would not
            task.set_caching_options(False)
        with dsl.If(hub_repo_id != "", name="publish-to-hub"):
            publish = c.publish_to_hub(
                output_dir=output_dir, report=report.outputs["report"], repo_id=hub_repo_id,
                private=hub_private, revision=hub_revision, source=dataset,
                token_secret=hub_token_secret,
            ).set_display_name("Publish to the Hugging Face Hub")
            publish.set_caching_options(False)

    return clip_index_pipeline


def _retrieve(settings: PipelineSettings) -> Any:
    from clip_index.pipelines.retrieve import make_retrieve_pipeline

    return make_retrieve_pipeline(settings)


def make_kubeflow_pipeline(settings: PipelineSettings = PipelineSettings()) -> Any:
    """The Kubeflow variant (see `kubeflow.py`; needs kfp-kubernetes, the `cloud` extra)."""
    from clip_index.pipelines.kubeflow import make_kubeflow_pipeline as make

    return make(settings)


# name → factory; compile.py writes one YAML per entry. Vertex AI takes "clip-index"; the
# Kubeflow variant is a two-document YAML that aiplatform.PipelineJob refuses.
PIPELINES: dict[str, Callable[[PipelineSettings], Any]] = {
    "clip-index": make_index_pipeline,
    "clip-index-kubeflow": make_kubeflow_pipeline,
    "clip-index-retrieve": _retrieve,
}
