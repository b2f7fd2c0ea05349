"""Run the embed loader over an image shard and report what came through; run by
tests/unit/test_embed_shm.py inside a mount namespace whose /dev/shm is a small tmpfs.

    python -m tests.support.shm_loader SHARD BATCH WORKERS {plan,no-plan} {cpu,device}

Prints one JSON line: rows seen, workers and prefetch used. The consumer is slow (as a forward
pass is), so the workers fill their prefetch queue, as they do in a real run.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import torch


def main(argv: list[str]) -> None:
    import open_clip

    from clip_index.embed.loader import UnitRows, collate, make_loader, stored_image_bytes
    from clip_index.embed.pixels import split_preprocess

    shard, batch, workers, plan, decode = argv[0], int(argv[1]), int(argv[2]), argv[3], argv[4]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    split = split_preprocess(open_clip.image_transform(224, is_train=False))
    assert split is not None
    rows = UnitRows([(0, shard)], split.pil_stage, jpeg_bytes=decode == "device")
    if plan == "plan":
        row_bytes = stored_image_bytes([(0, shard)]) if decode == "device" else 3 * 224 * 224
        loader = make_loader(rows, batch, workers, False, row_bytes)
    else:  # what the step did before: prefetch 4 per worker whatever /dev/shm holds
        loader = torch.utils.data.DataLoader(rows, batch_size=batch, num_workers=workers,
                                             collate_fn=collate, prefetch_factor=4)
    seen = 0
    batches = iter(loader)  # the workers start filling their prefetch queues now
    _wait_for_the_queues(loader.num_workers)
    for out in batches:
        time.sleep(0.3)  # the forward pass
        seen += len(out["good"]) + len(out["bad"])
    print(json.dumps({"rows": seen, "workers": loader.num_workers,
                      "prefetch": loader.prefetch_factor}))


def _wait_for_the_queues(workers: int, limit_s: float = 60.0) -> None:
    """Before the first batch is taken, let the workers fill what they prefetch (until
    /dev/shm stops growing for 3 s): on a busy machine a slow worker would otherwise never be
    ahead of the consumer, and whether the queues fit would depend on the machine's load."""
    import shutil

    if not workers:
        return
    start = last_change = time.monotonic()
    used = shutil.disk_usage("/dev/shm").used
    while time.monotonic() - start < limit_s and time.monotonic() - last_change < 3.0:
        time.sleep(0.25)
        now = shutil.disk_usage("/dev/shm").used
        if now != used:
            used, last_change = now, time.monotonic()


if __name__ == "__main__":
    main(sys.argv[1:])
