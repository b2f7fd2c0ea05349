"""Embed step: CLIP image embeddings for a work unit of image shards.

One process per GPU (or one on the CPU) builds the model once and streams all its shards
through one loader (`loader`): JPEGs are decoded and resized on the GPU, or decoded in DataLoader
workers on the CPU path; the next batches are prepared on a side stream while the forward pass
runs; each batch's embeddings stay on the device until the next batch is queued, then a writer
thread turns them into parquet rows. Undecodable images are counted; every input row leaves
with a status; a shard's stats file is written when its last row is, and marks it done.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from clip_index import io
from clip_index.config import EmbedConfig
from clip_index.embed.decoder import DeviceResize
from clip_index.embed.device import (
    choose_precision,
    default_num_workers,
    resolve_device,
    usable_cpus,
)
from clip_index.embed.loader import (
    DevicePrepare,
    Prefetcher,
    UnitRows,
    make_loader,
    stored_image_bytes,
)
from clip_index.embed.models import ClipModel, check_model_name, check_pretrained, load_model
from clip_index.embed.sinks import BackgroundWriter, PendingRows, ShardSinks
from clip_index.stats import ShardStats, UnitResult, check_failure_rate
from clip_index.units import UNIT_FILE, UnitRecord, collected_shards

log = logging.getLogger(__name__)


def default_batch_size(device: str) -> int:
    """Images per forward pass: 256 on a GPU (bf16 ViT-B-32 uses ~2 GB at 256), 64 on CPU
    (measured: CPU throughput is flat from 32 up)."""
    return 256 if device.startswith("cuda") else 64


def embedding_processes(device: str, shards: int) -> int:
    """Processes to embed with: one per visible GPU (at most one per shard), one on the CPU."""
    if not device.startswith("cuda"):
        return 1
    return max(1, min(torch.cuda.device_count(), shards))


def run_embed(image_dirs: Sequence[str], shards: Sequence[int] | None, output_dir: str,
              config: EmbedConfig) -> UnitResult:
    """Embed image shards `shards` (a task's work unit; None: the shards the download tasks
    behind `image_dirs` were given, from their unit records), found in `image_dirs`, into
    ``output_dir/part-NNNNN.parquet`` each.

    The device is resolved first (device='cuda' fails here, saying why, when CUDA is not
    usable); the model is built once per process and only when a shard is left to do; with
    several GPUs each gets its own process and a share of the shards. A shard whose stats file
    (written last) exists is skipped; the failure rate is checked over the unit.
    """
    config.validate()
    check_model_name(config.model)  # before any IO: a typo names the closest models
    check_pretrained(config.model, config.pretrained)
    start = time.monotonic()
    if shards is None:
        shards = collected_shards(image_dirs)[0]
    if not shards:  # a group past the dataset's last shard: nothing to do, no model to load
        log.info("embed: no shards in this work unit (the dataset has fewer shards than the "
                 "pipeline has embed tasks)")
    todo = [int(s) for s in shards if not io.exists(io.join(output_dir, io.stats_name(int(s))))]
    device = resolve_device(config.device) if todo else "cpu"
    processes = embedding_processes(device, len(todo)) if todo else 1
    # the weights first: a tag that cannot be fetched is reported before any image is read
    clip = load_model(config.model, config.pretrained, device, config.seed) \
        if todo and processes == 1 else None
    located = io.complete_shards(image_dirs) if todo else {}
    missing = [s for s in todo if s not in located]
    if missing:
        raise FileNotFoundError(
            f"embed: image shards {missing[:10]}{' ...' if len(missing) > 10 else ''} are not "
            f"complete in any of the {len(image_dirs)} download folders ({list(image_dirs)[:3]}"
            f"{' ...' if len(image_dirs) > 3 else ''}): the download step did not finish them")
    shard_paths = [(s, io.join(located[s], io.shard_name(s))) for s in todo]
    if clip is not None:
        fresh = embed_shards(shard_paths, output_dir, clip, config)
    elif shard_paths:
        fresh = _embed_in_processes(shard_paths, output_dir, config, device, processes)
    else:
        fresh = {}
    done: list[ShardStats] = []
    model: dict[str, Any] = {}
    for shard in (int(s) for s in shards):
        stats_path = io.join(output_dir, io.stats_name(shard))
        if shard in fresh:
            stats = fresh[shard]
        else:
            stats = ShardStats.from_dict(io.read_json(stats_path))
            stats.skipped = True
            log.info("embed: shard %d already complete, skipped", shard)
        model = model or io.read_json(stats_path)["model"]
        done.append(stats)
    check_failure_rate(done, config.max_failure_rate, "embed")
    _record_unit(image_dirs, shards, output_dir)
    return UnitResult(output_dir, done, time.monotonic() - start, extra=model)


def _record_unit(image_dirs: Sequence[str], shards: Sequence[int], output_dir: str) -> None:
    """``unit.json``: the shards this task was given, and the dataset's shards as the download
    tasks' records name them (None where they have none: folders not made by a pipeline)."""
    dataset: list[int] | None = None
    if image_dirs and all(io.exists(io.join(d, UNIT_FILE)) for d in image_dirs):
        dataset = collected_shards(image_dirs)[1]
    UnitRecord([int(s) for s in shards], dataset).write(output_dir)


def embed_shard(input_path: str, output_path: str, clip: ClipModel, config: EmbedConfig,
                shard: int = 0) -> ShardStats:
    """Embed one image parquet into `output_path` (and its stats file beside it)."""
    import posixpath

    out_dir = posixpath.dirname(output_path)
    return embed_shards([(shard, input_path)], out_dir, clip, config,
                        names={shard: posixpath.basename(output_path)})[shard]


def embed_shards(shard_paths: Sequence[tuple[int, str]], output_dir: str, clip: ClipModel,
                 config: EmbedConfig, processes: int = 1,
                 names: dict[int, str] | None = None) -> dict[int, ShardStats]:
    """Embed the image shards `shard_paths` [(shard, path)] through one loader and one model; each
    shard's parquet is closed and its stats file written as soon as its last row is written."""
    batch_size = config.batch_size or default_batch_size(clip.device)
    workers = default_num_workers(clip.device, processes) if config.num_workers < 0 \
        else config.num_workers
    capability = torch.cuda.get_device_capability() if clip.device.startswith("cuda") else None
    precision = choose_precision(config.precision, clip.device, capability)
    split = clip.split
    resize = DeviceResize.from_preprocess(split.pil_transforms) if split else None
    decode = config.decode
    if decode == "auto":
        decode = "device" if clip.device.startswith("cuda") and resize else "cpu"
    if decode == "device" and resize is None:
        raise ValueError(f"decode='device': {clip.name}'s preprocess is not a bicubic resize + "
                         "center crop, which the device decoder reproduces: use decode='cpu'")
    log.info("embed: %d shards on %s, %s, batch %d, %d decode workers, decode on %s",
             len(shard_paths), clip.device, precision, batch_size, workers, decode)
    transform = split.pil_stage if split else clip.preprocess
    sinks = ShardSinks(shard_paths, output_dir, clip, config, names or {})
    # a row in shared memory: its uint8 pixels at the crop size (decoded in a worker), or its
    # JPEG bytes (decoded on the device)
    size = resize.crop if resize else getattr(getattr(clip.model, "visual", None),
                                              "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    row_bytes = stored_image_bytes(shard_paths) if decode == "device" else 3 * height * width
    loader = make_loader(UnitRows(shard_paths, transform, jpeg_bytes=decode == "device"),
                         batch_size, workers, clip.device.startswith("cuda"),
                         row_bytes or 3 * height * width,
                         sharers=processes)  # one loader per GPU process, one /dev/shm
    prepare = DevicePrepare(clip.device, resize, transform)
    encoder = BatchEncoder(clip, precision)
    with BackgroundWriter() as writer:
        sinks.open_empty(writer)
        pending: PendingRows | None = None
        for batch in Prefetcher(loader, prepare, clip.device):
            vectors = encoder(batch["pixels"]) if batch["good"] else None
            current = PendingRows(batch, vectors)  # the copy to the host starts now, no wait
            if pending is not None:  # the previous batch's results: ready by now
                writer.put(pending.rows_writer(sinks))
            pending = current
        if pending is not None:
            writer.put(pending.rows_writer(sinks))
    return sinks.finish()


class BatchEncoder:
    """Encodes image batches into device tensors; on CUDA out-of-memory it halves the batch and
    goes on (and keeps the smaller size for the batches after)."""

    def __init__(self, clip: ClipModel, precision: str = "auto") -> None:
        self.clip = clip
        self.precision = precision
        self.max_batch: int | None = None

    def __call__(self, pixels: Any) -> Any:
        step = min(self.max_batch or len(pixels), len(pixels))
        parts = []
        start = 0
        while start < len(pixels):
            try:
                parts.append(self.clip.encode_tensor(pixels[start:start + step], self.precision))
                start += step
            except torch.cuda.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if step == 1:
                    raise
                step = max(1, step // 2)
                self.max_batch = step
                log.warning("embed: CUDA out of memory, batch size now %d", step)
        return torch.cat(parts) if parts else torch.zeros((0, self.clip.dim))


def _embed_in_processes(shard_paths: Sequence[tuple[int, str]], output_dir: str,
                        config: EmbedConfig, device: str, processes: int) -> dict[int, ShardStats]:
    """One process per GPU (rank r uses GPU r, with the same precision as any other), each with
    its own loader and a round-robin share of the shards. Replaces DataParallel, which copied
    the weights on every forward and dropped the autocast dtype in its threads (pytorch#125186).
    """
    context = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    results = context.Queue()
    children = []
    for rank in range(processes):
        share = list(shard_paths[rank::processes])
        child = context.Process(target=_child, name=f"embed-{device}-{rank}",
                                args=(rank, share, output_dir, asdict(config), device,
                                      processes, results))
        child.start()
        children.append(child)
    stats: dict[int, ShardStats] = {}
    errors: list[str] = []
    waiting = set(range(processes))
    while waiting:
        try:
            rank, payload, error = results.get(timeout=5)
        except queue.Empty:  # a child killed outright (OOM killer, segfault) reports nothing
            for rank in [r for r in waiting if children[r].exitcode not in (None, 0)]:
                waiting.discard(rank)
                errors.append(f"process {rank}: exited with code {children[rank].exitcode}")
            continue
        waiting.discard(rank)
        if error:
            errors.append(f"process {rank}: {error}")
        else:
            stats.update({int(k): ShardStats.from_dict(v) for k, v in payload.items()})
    for child in children:
        child.join()
    if errors:
        raise RuntimeError("embed: " + "\n".join(errors))
    return stats


def _child(rank: int, shard_paths: list[tuple[int, str]], output_dir: str, config: dict[str, Any],
           device: str, processes: int, results: Any) -> None:
    """One embedding process (spawned): its GPU, its model, its shards."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{rank}] %(name)s: %(message)s")
    try:
        settings = EmbedConfig(**config)
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        else:  # processes on the CPU share its cores
            torch.set_num_threads(max(1, usable_cpus() // processes))
        clip = load_model(settings.model, settings.pretrained, device, settings.seed)
        done = embed_shards(shard_paths, output_dir, clip, settings, processes=processes)
        results.put((rank, {s: st.as_dict() for s, st in done.items()}, None))
    except BaseException as exc:
        results.put((rank, {}, f"{exc!r}\n{traceback.format_exc(limit=5)}"))
