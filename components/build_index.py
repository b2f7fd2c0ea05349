"""The build_index component: the published embeddings → the faiss index and id mapping.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


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
        max_index_memory_usage: autofaiss memory budget for the index ("4G"); one-stage only.
        current_memory_available: autofaiss memory budget for building ("16G"); one-stage only.
        max_index_query_time_ms: Target per query, milliseconds (autofaiss and the tuning).
        index_key: faiss factory string to force, one stage ("" = autofaiss or two stages).
        target_recall: nprobe/efSearch set to the cheapest value reaching this recall@10.
        recall_queries: Held-out (leave-one-out) queries for tuning and recall (0 = skip).
        should_be_memory_mappable: Only autofaiss index types that can be memory-mapped.
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
