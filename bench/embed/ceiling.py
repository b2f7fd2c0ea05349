"""The ceiling: the model's image forward pass alone, on tensors preprocessed beforehand (not
timed), in batches of the size the embed step uses. Run as a subprocess by bench.embed.run:

    python -m bench.embed.ceiling --shard S --model ViT-B-32 --pretrained CKPT --batch-size 64

prints one JSON object (images, seconds, images_per_s, cpu_s, torch threads).
"""

from __future__ import annotations

import argparse
import io as _io
import json
import time

import pyarrow.parquet as pq
import torch
from PIL import Image

from clip_index.embed.models import autocast, load_model
from clip_index.embed.step import default_batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shard", required=True)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    clip = load_model(args.model, args.pretrained, "cpu")
    batch = args.batch_size or default_batch_size(clip.device)
    table = pq.read_table(args.shard, columns=["status", "image"])
    images = [img for img, status in zip(table.column("image").to_pylist(),
                                         table.column("status").to_pylist())
              if status == "success"]
    pixels = torch.stack([clip.preprocess(Image.open(_io.BytesIO(b)).convert("RGB"))
                          for b in images])
    with torch.inference_mode(), autocast("cpu", args.precision):
        clip.model.encode_image(pixels[:batch])  # warm-up, not timed
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, len(pixels), batch):
            clip.model.encode_image(pixels[start:start + batch])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"images": len(pixels), "seconds": wall, "images_per_s": len(pixels) / wall,
                      "cpu_s": cpu, "batch_size": batch, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
