"""KFP component declarations: thin bodies that call clip_index, one per pipeline step.

The functions below are plain Python; `make_components` turns them into KFP components bound to
the given container images. Bodies are shipped to the worker as source, so each imports what it
uses inside; they hold no logic beyond building a config and recording artifact metadata.
(No `from __future__ import annotations` here: KFP reads these annotations at runtime.)
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output


def load_dataset(
    dataset: str,
    urls: Output[Dataset],
    id_column: str = "uid",
    url_column: str = "url",
    caption_column: str = "text",
    limit: int = 0,
    shard_size: int = 10000,
    fingerprint: str = "",
) -> None:
    """Read an image-URL dataset and write it as URL shards.

    Args:
        dataset: Hugging Face dataset id (org/name) or parquet/csv/jsonl file or folder (gs:// ok).
        urls: Output folder of part-NNNNN.parquet (uid, url, caption) and manifest.json.
        id_column: Column holding a stable row id ("" = use the row number).
        url_column: Column holding the image URL.
        caption_column: Column holding the caption ("" = none).
        limit: Keep the first N rows (0 = all).
        shard_size: Rows per shard, the unit of parallelism and resume.
        fingerprint: What identifies the dataset's content (hub revision, hash of the file
            listing; set by clip-index run/submit): only read by the cache, so that a changed
            dataset is loaded again instead of reusing the old shards.
    """
    from clip_index.config import LoadConfig
    from clip_index.load.step import run_load

    config = LoadConfig(dataset=dataset, id_column=id_column, url_column=url_column,
                        caption_column=caption_column, limit=limit, shard_size=shard_size)
    urls.metadata.update(run_load(config, urls.path).as_metadata())


def plan_units(urls: Input[Dataset], max_units: int) -> list[dict]:
    """Split the loaded shards into at most `max_units` work units, one per loop iteration.

    Args:
        urls: The load step's output folder.
        max_units: Units wanted: the loop's width, fixed when the pipeline is compiled
            (download or embed parallelism), never derived from the row count.
    """
    from clip_index.load.step import plan_units as plan

    return plan(urls.path, int(max_units))


def download_images(
    urls: Input[Dataset],
    unit: dict,
    images: Output[Dataset],
    image_size: int = 256,
    resize_mode: str = "keep_ratio",
    timeout_s: float = 20.0,
    retries: int = 2,
    concurrency: int = 512,
    per_host_concurrency: int = 16,
    min_image_size: int = 0,
    max_aspect_ratio: float = 0.0,
    max_image_bytes: int = 32 * 1024 * 1024,
    allow_private_networks: bool = False,
    respect_opt_out: bool = True,
    max_failure_rate: float = 1.0,
) -> None:
    """Download, verify, resize and re-encode the images of a work unit's URL shards.

    Args:
        urls: The load step's output folder.
        unit: The work unit from plan_units: {"unit": N, "shards": [shard numbers]}.
        images: Output folder: part-NNNNN.parquet per shard (every row, with status and error)
            + part-NNNNN_stats.json; metadata: totals and a per-shard table.
        image_size: Target size in pixels (shorter side for keep_ratio); never upscaled.
        resize_mode: keep_ratio, center_crop, border or no.
        timeout_s: Total deadline per request attempt, seconds.
        retries: Extra attempts after a retryable failure (timeouts, 429, 5xx).
        concurrency: Requests in flight (the web is latency-bound: hundreds are cheap).
        per_host_concurrency: Requests in flight to one host (politeness).
        min_image_size: Images with a shorter side below this are filtered (pixels).
        max_aspect_ratio: Images more elongated than this are filtered (0 = off).
        max_image_bytes: Bodies larger than this are refused (bytes).
        allow_private_networks: Allow private/loopback/link-local addresses (off on cloud
            workers: it would expose the metadata server).
        respect_opt_out: Honour X-Robots-Tag noai/noimageai (rows become opted_out).
        max_failure_rate: Fail the task when the shard's failure share passes this.
    """
    from clip_index.config import DownloadConfig
    from clip_index.download.step import run_download

    config = DownloadConfig(image_size=image_size, resize_mode=resize_mode, timeout_s=timeout_s,
                            retries=retries, concurrency=concurrency,
                            per_host_concurrency=per_host_concurrency,
                            min_image_size=min_image_size, max_aspect_ratio=max_aspect_ratio,
                            max_image_bytes=max_image_bytes,
                            allow_private_networks=allow_private_networks,
                            respect_opt_out=respect_opt_out, max_failure_rate=max_failure_rate)
    shards = [int(s) for s in unit["shards"]]  # kfp.local hands numbers back as floats
    images.metadata.update(run_download(urls.path, shards, images.path, config).as_metadata())


def embed_images(
    images: Input[list[Dataset]],
    unit: dict,
    embeddings: Output[Dataset],
    model: str = "ViT-B-32",
    pretrained: str = "laion2b_s34b_b79k",
    batch_size: int = 0,
    dtype: str = "float32",
    seed: int = 0,
    precision: str = "auto",
    num_workers: int = -1,
    device: str = "auto",
) -> None:
    """Embed the downloaded images of a work unit's shards with an open_clip model, the model
    built once for all of them (one process per GPU).

    Args:
        images: Every download task's output folder (the unit's shards are found among them).
        unit: The work unit from plan_units: {"unit": N, "shards": [shard numbers]}.
        embeddings: Output folder: part-NNNNN.parquet per shard (every row; L2-normalised
            embedding) + stats; metadata: totals, the model and a per-shard table.
        model: open_clip model name.
        pretrained: Pretrained tag, checkpoint path, 'bundled' (tiny-clip) or 'none'.
        batch_size: Images per forward pass (0 = 256 per GPU, 64 on CPU); halved on CUDA
            out-of-memory.
        dtype: Stored embedding type, float32 or float16 (half the disk).
        seed: Seed for random weights (pretrained='none').
        precision: auto (bf16 where native, sm_80+; fp16 on T4/V100/P100; exact fp32 on CPU),
            fp32, bf16 or fp16.
        num_workers: Image reading processes per GPU (-1 = from the CPU limit; none on CPU).
        device: cuda (set by a pipeline compiled with a GPU: fail at once if CUDA is not
            usable), auto or cpu.
    """
    from clip_index.config import EmbedConfig
    from clip_index.embed.step import run_embed

    config = EmbedConfig(model=model, pretrained=pretrained, batch_size=batch_size, dtype=dtype,
                         seed=seed, precision=precision, num_workers=num_workers, device=device)
    shards = [int(s) for s in unit["shards"]]  # kfp.local hands numbers back as floats
    embeddings.metadata.update(
        run_embed([i.path for i in images], shards, embeddings.path, config).as_metadata())


def write_embeddings(
    embeddings: Input[list[Dataset]],
    urls: Input[Dataset],
    images: Input[list[Dataset]],
    output_dir: str,
    data: Output[Dataset],
    thumbnail_px: int = 128,
) -> None:
    """Collect the embedding shards into the published output folder, with a thumbnail of
    every indexed image.

    Args:
        embeddings: Every embed task's output folder.
        urls: The load step's output (its manifest lists the shards that must all be there).
        images: Every download task's output folder: the thumbnails are cut from them.
        output_dir: The published folder (local or gs://): data/, failed/, thumbnails/,
            manifest.json.
        data: Records what was written (metadata: rows, successes, model, dim, thumbnails).
        thumbnail_px: Long side of the WebP thumbnail kept per indexed image, pixels (0 = none).
    """
    from clip_index.index.write import run_write
    from clip_index.load.step import plan_shards

    result = run_write([e.path for e in embeddings], output_dir,
                       expected_shards=plan_shards(urls.path),
                       image_dirs=[i.path for i in images], thumbnail_px=thumbnail_px)
    data.metadata.update(result.as_metadata())


def build_index(
    data: Input[Dataset],
    output_dir: str,
    index: Output[Artifact],
    metrics: Output[Metrics],
    max_index_memory_usage: str = "4G",
    current_memory_available: str = "16G",
    max_index_query_time_ms: float = 10.0,
    index_key: str = "",
    target_recall: float = 0.95,
    recall_queries: int = 1000,
    should_be_memory_mappable: bool = False,
    two_stage_min_vectors: int = 250_000,
    first_stage_key: str = "",
    rerank_dtype: str = "float16",
) -> None:
    """Build the faiss index and the id mapping; tune and measure recall and latency. From
    two_stage_min_vectors vectors on, two stages: a compressed faiss first stage proposes
    candidates and an exact re-rank from memory-mapped stored vectors orders them.

    Args:
        data: The write step's record (ties the index to the data in lineage).
        output_dir: The published folder: faiss/knn.index (+ faiss/rerank_vectors.index for
            two stages), id_mapping/, index_infos.json.
        index: Records the index (metadata: key, vectors, dim, size, recall).
        metrics: recall@1/@10 and latency, shown by Vertex.
        max_index_memory_usage: autofaiss memory budget for the index ("4G").
        current_memory_available: autofaiss memory budget for building ("16G").
        max_index_query_time_ms: autofaiss target per query, milliseconds.
        index_key: faiss factory string to force ("" = autofaiss chooses).
        target_recall: nprobe/efSearch set to the cheapest value reaching this recall@10.
        recall_queries: Held-out (leave-one-out) queries for tuning and recall (0 = skip).
        should_be_memory_mappable: Only index types that can be memory-mapped at query time.
        two_stage_min_vectors: Vectors from which the index has two stages (0 = never).
        first_stage_key: The first stage's faiss factory string ("" = chosen from the size).
        rerank_dtype: Storage of the re-rank vectors: "float16" or "float32".
    """
    from clip_index.config import IndexConfig
    from clip_index.index.build import run_index

    config = IndexConfig(max_index_memory_usage=max_index_memory_usage,
                         current_memory_available=current_memory_available,
                         max_index_query_time_ms=max_index_query_time_ms, index_key=index_key,
                         target_recall=target_recall, recall_queries=recall_queries,
                         should_be_memory_mappable=should_be_memory_mappable,
                         two_stage_min_vectors=two_stage_min_vectors,
                         first_stage_key=first_stage_key, rerank_dtype=rerank_dtype)
    result = run_index(output_dir, config)
    index.metadata.update({k: v for k, v in result.infos.items() if k != "autofaiss"})
    index.metadata["output_dir"] = output_dir
    metrics.metadata["index_key"] = result.infos["index_key"]
    metrics.metadata["index_param"] = result.infos["index_param"]
    metrics.metadata["stages"] = result.describe_stages()
    for name, value in result.as_metrics().items():
        metrics.log_metric(name, value)


def report(
    output_dir: str,
    index: Input[Artifact],
    images: Input[list[Dataset]],
    report: Output[Markdown],
    report_html: Output[HTML],
) -> None:
    """Write the run report: counts, failures by reason, index quality, sample queries.

    Args:
        output_dir: The published folder (report.md and report.html are written there too).
        index: The index step's record (orders the report after it).
        images: Every download task's output folder: the thumbnails are cut from them.
        report: Markdown report (run table, failures, sample queries), shown in the Vertex UI.
        report_html: Self-contained HTML report with a thumbnail grid of sample query results.
    """
    from clip_index import io, schema
    from clip_index.publish.report import REPORT_HTML, build_report

    result = build_report(output_dir, image_dirs=[i.path for i in images])
    for artifact, text, name in ((report, result.markdown, schema.REPORT),
                                 (report_html, result.html, REPORT_HTML)):
        with open(artifact.path, "w", encoding="utf-8") as f:
            f.write(text)
        io.write_bytes_atomic(io.join(output_dir, name), text.encode())
        artifact.metadata.update(result.summary)


def publish_to_hub(
    output_dir: str,
    report: Input[Markdown],
    repo_id: str,
    published: Output[Artifact],
    private: bool = False,
    revision: str = "",
    source: str = "",
    token_secret: str = "",
) -> None:
    """Upload the output folder to the Hugging Face Hub as a dataset, with a generated card.

    Args:
        output_dir: The published folder (local, /gcs/ or gs://).
        report: The report step's output (orders publishing after it).
        repo_id: The Hub dataset, ORG/NAME (created when missing).
        published: Records the dataset URL, branch and commit.
        private: Create the dataset private.
        revision: Branch to commit to ("" = main).
        source: What was indexed, for the card.
        token_secret: Secret Manager version holding a Hub write token
            (projects/P/secrets/S/versions/latest); "" = HF_TOKEN in the task's environment.
    """
    from clip_index.config import PublishConfig
    from clip_index.publish.hub import secret_token
    from clip_index.publish.step import run_publish

    config = PublishConfig(repo_id=repo_id, private=private, revision=revision, source=source)
    token = secret_token(token_secret) if token_secret else None
    result = run_publish(output_dir, config, token=token)
    published.metadata.update(result.as_dict())


@dataclass(frozen=True)
class Components:
    """The pipeline's components, bound to container images."""

    load_dataset: Any
    plan_units: Any
    download_images: Any
    embed_images: Any
    write_embeddings: Any
    build_index: Any
    report: Any
    publish_to_hub: Any


def make_components(cpu_image: str, gpu_image: str) -> Components:
    """KFP components for every step: the embed step on `gpu_image`, the rest on `cpu_image`."""

    def on(image: str, func: Any) -> Any:
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return Components(
        load_dataset=on(cpu_image, load_dataset),
        plan_units=on(cpu_image, plan_units),
        download_images=on(cpu_image, download_images),
        embed_images=on(gpu_image, embed_images),
        write_embeddings=on(cpu_image, write_embeddings),
        build_index=on(cpu_image, build_index),
        report=on(cpu_image, report),
        publish_to_hub=on(cpu_image, publish_to_hub),
    )
