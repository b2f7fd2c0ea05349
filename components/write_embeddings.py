"""The write_embeddings component: every embed group's shards → the published output folder.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Input, Output


def write_embeddings(
    embeddings: Input[list[Dataset]],
    output_dir: str,
    data: Output[Dataset],
) -> None:
    """Collect the embedding shards into the published output folder, with the thumbnail the
    download step made of every indexed image.

    Args:
        embeddings: Every embed task's output folder; their unit.json name every shard of
            the dataset, and the write refuses to publish unless all of them are there.
        output_dir: The published folder (local or gs://): data/, failed/, thumbnails/,
            manifest.json.
        data: Records what was written (metadata: rows, successes, model, dim, thumbnails).
    """
    from clip_index.index.write import run_write

    data.metadata.update(run_write([e.path for e in embeddings], output_dir).as_metadata())
