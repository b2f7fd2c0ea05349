"""The load_queries component: prompts or query embeddings → a Dataset of queries.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Output


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
