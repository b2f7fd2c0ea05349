"""The retrieve_matches component: every query's top matches in a published index.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Input, Output


def retrieve_matches(
    queries: Input[Dataset],
    index_dir: str,
    matches: Output[Dataset],
    urls: Output[Dataset],
    num_images: int = 10,
    deduplicate: bool = False,
    batch_size: int = 256,
    mmap: bool = False,
    shard_size: int = 10000,
    filters: str = "",
) -> None:
    """Search a published clip-index folder with every query; the index is loaded once.

    Args:
        queries: The load_queries output.
        index_dir: A published clip-index folder (faiss/, id_mapping/, manifest.json), gs:// ok.
        matches: Output folder: matches.parquet (query, rank, uid, url, caption, score).
        urls: Output folder: the distinct matched images as URL shards + manifest.json, in the
            load step's layout (input of the download step).
        num_images: Matches per query.
        deduplicate: Drop near-identical matches (cosine >= 0.94 to a better one).
        batch_size: Queries per model call and index search.
        mmap: Memory-map the index instead of reading it into RAM.
        shard_size: Rows per URL shard of the matched images.
        filters: Only matches that pass these filters, as JSON or name=value,... (min_width,
            min_height, max_aspect_ratio, min_clip_b32_score, min_clip_l14_score, max_faces,
            exclude_changed, uids); "" = none. Applied inside the index search.
    """
    from clip_index.config import RetrieveConfig
    from clip_index.search.retrieve import run_retrieve

    config = RetrieveConfig(num_images=num_images, deduplicate=deduplicate,
                            batch_size=batch_size, mmap=mmap, shard_size=shard_size,
                            filters=filters)
    result = run_retrieve(queries.path, index_dir, matches.path, urls.path, config)
    matches.metadata.update(result.as_metadata())
    urls.metadata["rows"] = result.unique_images
