"""The embed_images component: one embed group's images → CLIP embeddings (the GPU task).
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Dataset, Input, Output


def embed_images(
    images: Input[list[Dataset]],
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
    """Embed the images of one embed group, the shards its own download tasks were given, with
    an open_clip model built once for all of them (one process per GPU).

    Args:
        images: The output folders of this group's download tasks: their unit.json name the
            shards to embed.
        embeddings: Output folder: part-NNNNN.parquet per shard (every row, the download
            shard's columns carried through, L2-normalised embedding) + stats + unit.json;
            metadata: totals, the model and a per-shard table.
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
    # shards=None: the shards this group's download tasks were given (their unit.json)
    embeddings.metadata.update(
        run_embed([i.path for i in images], None, embeddings.path, config).as_metadata())
