"""KFP component declarations of the retrieve pipeline: load a Dataset of queries, then search a
published index with it. Thin bodies that call clip_index.search.retrieve (no logic here).
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Input, Output


def load_queries(
    source: str,
    queries: Output[Dataset],
    query_column: str = "text",
    embedding_column: str = "embedding",
) -> None:
    """Read prompts or query embeddings into a Dataset of queries.

    Args:
        source: txt (one prompt a line), csv/jsonl/parquet (a prompt column or an embedding
            column of float lists) or npy (an (n, dim) array of embeddings); local or gs://.
        queries: Output folder: queries.parquet (query, and embedding for embedding queries).
        query_column: Prompt column of csv/jsonl/parquet files (labels for embedding rows).
        embedding_column: Column of query embeddings, when the file has one.
    """
    from clip_index.config import RetrieveConfig
    from clip_index.search.retrieve import run_load_queries

    config = RetrieveConfig(query_column=query_column, embedding_column=embedding_column)
    queries.metadata["queries"] = run_load_queries(source, queries.path, config)


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
    """
    from clip_index.config import RetrieveConfig
    from clip_index.search.retrieve import run_retrieve

    config = RetrieveConfig(num_images=num_images, deduplicate=deduplicate,
                            batch_size=batch_size, mmap=mmap, shard_size=shard_size)
    result = run_retrieve(queries.path, index_dir, matches.path, urls.path, config)
    matches.metadata.update(result.as_metadata())
    urls.metadata["rows"] = result.unique_images


@dataclass(frozen=True)
class RetrieveComponents:
    """The retrieve pipeline's own components, bound to the CPU image."""

    load_queries: Any
    retrieve_matches: Any


def make_retrieve_components(cpu_image: str) -> RetrieveComponents:
    def on(func: Any) -> Any:
        return dsl.component(func, base_image=cpu_image, install_kfp_package=False)

    return RetrieveComponents(load_queries=on(load_queries),
                              retrieve_matches=on(retrieve_matches))
