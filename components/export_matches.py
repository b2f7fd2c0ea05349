"""KFP component declaration of the export pipeline: every match above a similarity threshold
of a file of prompts in a published index, exact, as parquet + a DataComp uid subset. A thin
body that calls clip_index.search.export (no logic here).
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Output


def export_matches(
    index_dir: str,
    prompts: str,
    threshold: float,
    matches: Output[Dataset],
    prompt_kind: str = "auto",
    query_column: str = "text",
    embedding_column: str = "embedding",
    max_per_prompt: int = 0,
    union: bool = False,
    block_rows: int = 32768,
    batch_size: int = 256,
) -> None:
    """Export every image whose cosine with a prompt reaches the threshold (exact scan).

    Args:
        index_dir: A published clip-index folder (faiss/, id_mapping/, manifest.json), gs:// ok.
        prompts: Prompts file: txt (one a line), csv/jsonl/parquet (a prompt column or an
            embedding column of float lists) or npy (an (n, dim) array of embeddings); gs:// ok.
        threshold: Cosine similarity a match must reach (score >= threshold), in [-1, 1].
        matches: Output folder: matches.parquet (prompt, rank, uid, url, caption, score, i),
            uids.npy (DataComp subset: sorted u8,u8 uids) and summary.json.
        prompt_kind: How the prompts file is read: auto, text, image (each line or value is an
            image path) or embedding.
        query_column: Prompt column of csv/jsonl/parquet prompt files.
        embedding_column: Embedding column of csv/jsonl/parquet prompt files.
        max_per_prompt: Keep each prompt's best N matches (0 = every match).
        union: One row per matched image (best prompt and score, count of prompts matched)
            instead of one row per prompt and image.
        block_rows: Stored vectors scored per block (bounds memory whatever the index size).
        batch_size: Prompts per model call.
    """
    from clip_index.search.export import load_prompts, run_export
    from clip_index.search.export_config import ExportConfig

    config = ExportConfig(threshold=threshold, max_per_prompt=max_per_prompt, union=union,
                          block_rows=block_rows, prompt_kind=prompt_kind,
                          query_column=query_column, embedding_column=embedding_column,
                          batch_size=batch_size)
    result = run_export(index_dir, matches.path, config, load_prompts(prompts, config))
    matches.metadata.update(result.as_metadata())
