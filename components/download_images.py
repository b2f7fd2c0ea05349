"""The download_images component: one download unit's images, verified, resized, with thumbnails.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Input, Output


def download_images(
    urls: Input[Dataset],
    group: int,
    part: int,
    groups: int,
    parts: int,
    images: Output[Dataset],
    image_size: int = 256,
    resize_mode: str = "keep_ratio",
    timeout_s: float = 20.0,
    download_retries: int = 2,
    concurrency: int = 512,
    per_host_concurrency: int = 16,
    min_image_size: int = 0,
    max_aspect_ratio: float = 0.0,
    max_image_bytes: int = 32 * 1024 * 1024,
    allow_private_networks: bool = False,
    respect_opt_out: bool = True,
    max_failure_rate: float = 1.0,
    thumbnail_px: int = 128,
) -> None:
    """Download, verify, resize and re-encode the images of a work unit's URL shards.

    Args:
        urls: The load step's output folder.
        group: This task's embed group (the outer loop's item), 0..groups-1.
        part: This task's download unit within its group (the inner loop's item), 0..parts-1.
        groups: Embed groups the pipeline was compiled with (the outer loop's width).
        parts: Download units per group (the inner loop's width); the task reads unit
            group * parts + part of groups * parts, a range of consecutive shards.
        images: Output folder: part-NNNNN.parquet per shard (every row, with status, error
            and thumbnail) + part-NNNNN_stats.json + unit.json; metadata: totals and a
            per-shard table.
        image_size: Target size in pixels (shorter side for keep_ratio); never upscaled.
        resize_mode: keep_ratio, center_crop, border or no.
        timeout_s: Total deadline per request attempt, seconds.
        download_retries: Extra attempts after a retryable failure (timeouts, 429, 5xx).
        concurrency: Requests in flight (the web is latency-bound: hundreds are cheap).
        per_host_concurrency: Requests in flight to one host (politeness).
        min_image_size: Images with a shorter side below this are filtered (pixels).
        max_aspect_ratio: Images more elongated than this are filtered (0 = off).
        max_image_bytes: Bodies larger than this are refused (bytes).
        allow_private_networks: Allow private/loopback/link-local addresses (off on cloud
            workers: it would expose the metadata server).
        respect_opt_out: Honour X-Robots-Tag noai/noimageai (rows become opted_out).
        max_failure_rate: Fail the task when the failure share of its unit's rows passes this.
        thumbnail_px: Long side of the WebP thumbnail kept per image, pixels (0 = none).
    """
    from clip_index.config import DownloadConfig
    from clip_index.download.step import run_download
    from clip_index.units import download_shards

    config = DownloadConfig(image_size=image_size, resize_mode=resize_mode, timeout_s=timeout_s,
                            download_retries=download_retries, concurrency=concurrency,
                            per_host_concurrency=per_host_concurrency,
                            min_image_size=min_image_size, max_aspect_ratio=max_aspect_ratio,
                            max_image_bytes=max_image_bytes,
                            allow_private_networks=allow_private_networks,
                            respect_opt_out=respect_opt_out, max_failure_rate=max_failure_rate,
                            thumbnail_px=thumbnail_px)
    # kfp.local hands loop items back as floats
    shards = download_shards(urls.path, int(group), int(part), int(groups), int(parts))
    images.metadata.update(run_download(urls.path, shards, images.path, config).as_metadata())
