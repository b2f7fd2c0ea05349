"""The load_dataset component: an image-URL dataset → URL shards.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Output


def load_dataset(
    dataset: str,
    urls: Output[Dataset],
    id_column: str = "uid",
    url_column: str = "url",
    caption_column: str = "text",
    limit: int = 0,
    shard_size: int = 10000,
    dataset_fingerprint: str = "",
    extra_columns: str = "auto",
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
        dataset_fingerprint: What identifies the dataset's content (hub revision, hash of the file
            listing; set by clip-index run/submit): only read by the cache, so that a changed
            dataset is loaded again instead of reusing the old shards.
        extra_columns: Source columns kept beside uid/url/caption for filtering, comma-separated
            ("auto" = DataComp's metadata columns the source has, face_bboxes as a face count;
            "" = none).
    """
    from clip_index.config import LoadConfig
    from clip_index.load.step import run_load

    config = LoadConfig(dataset=dataset, id_column=id_column, url_column=url_column,
                        caption_column=caption_column, limit=limit, shard_size=shard_size,
                        extra_columns=extra_columns)
    urls.metadata.update(run_load(config, urls.path).as_metadata())
