"""Where the download step's image work goes, per format: decode, resize, encode and sha256
of every corpus image in one process (no network, no pool), then the step's own
`process_batch` over the same images with user and system CPU per image.

    python -m bench.download.stages [--images 10000] [--sample 0] [--image-decoder pillow|auto|vips]
        [--formats png]

Uses the download benchmark's corpus (generated if missing). The stages are the functions
`clip_index.download.resize.process_image` calls (decode, fit, encode) plus the sha256; the
last line is the workers' whole function, without the per-stage timers.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import resource
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.download import corpus as corpus_mod
from bench.download.run import DEFAULT_WORK
from clip_index.config import DownloadConfig
from clip_index.download import resize

STAGES = ("decode", "resize", "encode", "sha256")


def _stages(data: bytes, config: DownloadConfig) -> dict[str, float]:
    """Seconds per stage for one image: the step's own functions, in `process_image`'s order."""
    t0 = time.perf_counter()
    decoded = resize.decode(data, config)  # open, size checks, (scaled) decode
    t1 = time.perf_counter()
    img = resize.fit(decoded, config)  # resize, orient, flatten to RGB, crop/pad
    t2 = time.perf_counter()
    resize.encode(img, config)
    t3 = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    t4 = time.perf_counter()
    return dict(zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000, help="corpus size")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--sample", type=int, default=0, help="images to time (0 = all)")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    p.add_argument("--image-decoder", default="auto", choices=("auto", "pillow", "vips"),
                   help="the step's decoder: auto (PNGs of 4 MP+ through libvips), pillow, or "
                        "vips (every PNG through libvips)")
    p.add_argument("--formats", default="", help="only these corpus formats (e.g. png,webp)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = corpus_mod.ensure(args.work_dir / f"corpus-{args.images}-seed{args.seed}",
                               corpus_mod.CorpusParams(images=args.images, seed=args.seed))
    rows = corpus.files.select(["relpath", "format"]).to_pylist()
    if args.formats:
        rows = [r for r in rows if r["format"] in args.formats.split(",")]
    if args.sample:
        rows = random.Random(0).sample(rows, min(args.sample, len(rows)))
    # read from disk per image, not held: the step's processes trim their heap past 512 MiB
    # of RSS, which 2.5 GB of bodies held here would trigger after every batch
    paths = [(corpus.root / r["relpath"], r["format"]) for r in rows]
    config = DownloadConfig(image_size=224, resize_mode="keep_ratio",
                            image_decoder=args.image_decoder)
    resize.init_worker(config)  # the workers' allocator settings too

    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: Counter[str] = Counter()
    for path, fmt in paths:
        counts[fmt] += 1
        for stage, seconds in _stages(path.read_bytes(), config).items():
            totals[fmt][stage] += seconds
    n = len(paths)
    print(f"{n} images; ms per image of that format (share of the mix)")
    print("| format | share | " + " | ".join(STAGES) + " | total |")
    print("|---|---:|" + "---:|" * (len(STAGES) + 1))
    mix: dict[str, float] = defaultdict(float)
    for fmt in sorted(counts):
        per = {s: totals[fmt][s] / counts[fmt] * 1000 for s in STAGES}
        for s in STAGES:
            mix[s] += totals[fmt][s] / n * 1000
        print(f"| {fmt} | {counts[fmt] / n:.0%} | "
              + " | ".join(f"{per[s]:.2f}" for s in STAGES) + f" | {sum(per.values()):.2f} |")
    print("| **mix** | 100% | " + " | ".join(f"{mix[s]:.2f}" for s in STAGES)
          + f" | {sum(mix.values()):.2f} |")

    user = system = faults = 0.0
    for start in range(0, n, 16):
        batch = [path.read_bytes() for path, _ in paths[start:start + 16]]
        before = resource.getrusage(resource.RUSAGE_SELF)
        resize.process_batch(batch)
        after = resource.getrusage(resource.RUSAGE_SELF)
        user += after.ru_utime - before.ru_utime
        system += after.ru_stime - before.ru_stime
        faults += after.ru_minflt - before.ru_minflt
    print(f"\nprocess_batch (the workers' function): {(user + system) / n * 1000:.2f} ms CPU "
          f"per image ({user / n * 1000:.2f} user, {system / n * 1000:.2f} system), "
          f"{faults / n:.0f} page faults per image")


if __name__ == "__main__":
    main()
