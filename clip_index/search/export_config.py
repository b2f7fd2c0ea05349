"""Export step configuration: a frozen dataclass with `validate()`, in `clip_index.config`'s
conventions (kept beside the export step rather than in config.py while that file is busy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clip_index.config import _check, _Config

PROMPT_KINDS = ("auto", "text", "image", "embedding")


@dataclass(frozen=True)
class ExportConfig(_Config):
    """Export step: every image whose cosine with a prompt is at least `threshold`.

    threshold: the cosine similarity a match reaches (score >= threshold, compared in float32).
    max_per_prompt: keep each prompt's best N matches (0 = every match).
    union: one row per matched image (its best prompt and score, how many prompts it matched)
        instead of one row per (prompt, image).
    block_rows: stored vectors scored per block; memory ≈ block_rows × (6 × dim + 5 × prompts)
        bytes, whatever the index's size.
    prompt_kind: how a prompts file is read: auto (.npy / an embedding column = embeddings, else
        text), text, image (each prompt is an image path, local or fsspec), embedding.
    query_column / embedding_column: the columns of csv/jsonl/parquet prompt files.
    batch_size: prompts per model call.

    Attributes:
        threshold: Cosine similarity a match must reach (score >= threshold), in [-1, 1].
        max_per_prompt: Keep each prompt's best N matches (0 = every match).
        union: One row per matched image (best prompt and score, count of prompts matched)
            instead of one row per prompt and image.
        block_rows: Stored vectors scored per block (bounds memory whatever the index size).
        prompt_kind: How a prompts file is read: auto, text, image (image paths) or embedding.
        query_column: Prompt column of csv/jsonl/parquet prompt files.
        embedding_column: Embedding column of csv/jsonl/parquet prompt files.
        batch_size: Prompts per model call.
    """

    threshold: float
    max_per_prompt: int = 0
    union: bool = False
    block_rows: int = 32_768
    prompt_kind: str = "auto"
    query_column: str = "text"
    embedding_column: str = "embedding"
    batch_size: int = 256

    def validate(self) -> None:
        _check(isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
               and -1.0 <= self.threshold <= 1.0, "threshold", self.threshold,
               "a cosine similarity in [-1, 1]")
        _check(self.max_per_prompt >= 0, "max_per_prompt", self.max_per_prompt,
               "an integer >= 0 (0 = every match)")
        _check(1 <= self.block_rows <= 4_194_304, "block_rows", self.block_rows, "1..4194304")
        _check(self.prompt_kind in PROMPT_KINDS, "prompt_kind", self.prompt_kind,
               f"one of {PROMPT_KINDS}")
        _check(bool(self.query_column), "query_column", self.query_column, "a column name")
        _check(bool(self.embedding_column), "embedding_column", self.embedding_column,
               "a column name")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
