"""Loader: one read → decode → preprocess pipeline for every shard of a work unit.

- `UnitRows`: the successful rows of all the unit's image shards, row groups divided among the
  DataLoader workers (built once; it outlives shard boundaries). On the CPU path a worker
  decodes with Pillow and runs open_clip's PIL stage (exact); on the device path it only hands
  over the JPEG bytes (`decoder`), and non-JPEG images are decoded in the worker as before.
- `collate`: stacks what can be stacked and puts a batch's JPEG bytes into one tensor plus
  offsets (a batch crosses from a worker as two or three shared-memory segments, not one per
  image); undecodable rows go aside, to be written and counted.
- `shm_plan` / `make_loader`: workers and prefetch sized to what `/dev/shm` holds (a pod's
  default is 64 MB; "Bus error" in the workers when it fills), logged at start.
- `DevicePrepare`: finishes a batch on the model's device: JPEGs decoded in one call, resized in
  groups of equal size, CPU-decoded pixels copied (non-blocking, from pinned memory).
- `Prefetcher`: runs the loader and `DevicePrepare` on a thread (and, on CUDA, a side stream)
  `depth` batches ahead of the forward pass, so reading, decoding and copying overlap compute.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.utils.data

from clip_index import io, schema
from clip_index.embed.decoder import DeviceResize, decode_jpegs, is_jpeg
from clip_index.schema import Status

log = logging.getLogger(__name__)

META_COLUMNS = [schema.UID, schema.URL, schema.CAPTION, schema.STATUS, schema.ERROR]
SHARD = "_shard"


class UnitRows(torch.utils.data.IterableDataset):
    """Successful rows of the image shards `shard_paths` [(shard, path), ...] as dicts with the
    meta columns, `_shard`, and either `pixels` (uint8 or float tensor from `transform`), `jpeg`
    (1-D uint8 tensor of the file's bytes, when `jpeg_bytes`) or an error. Row groups of all
    shards, in shard order, are dealt round-robin to the workers, so that the workers finish
    the shards in order."""

    def __init__(self, shard_paths: Sequence[tuple[int, str]], transform: Any,
                 jpeg_bytes: bool = False) -> None:
        self.shard_paths = list(shard_paths)
        self.transform = transform  # PIL image -> tensor (3, H, W)
        self.jpeg_bytes = jpeg_bytes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = -1
        for shard, path in self.shard_paths:
            fs, fs_path = io.filesystem(path)
            with fs.open(fs_path, "rb") as f:
                parquet = pq.ParquetFile(f)
                for group in range(parquet.num_row_groups):
                    index += 1
                    if index % workers != worker:
                        continue
                    table = parquet.read_row_group(group, columns=[*META_COLUMNS, schema.IMAGE])
                    for row in table.to_pylist():
                        if row[schema.STATUS] == Status.SUCCESS.value:
                            yield self._row(shard, row)

    def _row(self, shard: int, row: dict[str, Any]) -> dict[str, Any]:
        row[SHARD] = shard
        image = row.pop(schema.IMAGE)
        if self.jpeg_bytes and image and is_jpeg(image):
            row["jpeg"] = torch.frombuffer(bytearray(image), dtype=torch.uint8)
            return row
        try:
            row["pixels"] = decode_on_cpu(image, self.transform)
        except Exception as exc:  # counted in collate, never a crash
            mark_undecodable(row, exc)
        return row


def decode_on_cpu(image: bytes, transform: Any) -> Any:
    """Pillow decode + `transform` (open_clip's preprocess or its PIL stage)."""
    from PIL import Image

    with Image.open(_io.BytesIO(image)) as img:
        return transform(img.convert("RGB"))


def mark_undecodable(row: dict[str, Any], exc: BaseException | str) -> None:
    row["pixels"] = None
    row.pop("jpeg", None)
    row[schema.STATUS] = Status.FAILED_TO_DECODE.value
    row[schema.ERROR] = f"embed_decode_error: {exc}"[:300]


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded images; put the JPEG bytes of the batch into one 1-D uint8 tensor
    `jpeg_data` with `jpeg_offsets` (N + 1), -1 offsets where a worker decoded the row instead
    (its pixels are in `decoded`, stacked, rows `decoded_rows`); keep the undecodable rows aside
    so they are written too. Few tensors per batch: each one a worker returns is a shared-memory
    segment and a file descriptor until the main process drops it."""
    good = [r for r in rows if r.get("pixels") is not None or "jpeg" in r]
    bad = [{k: v for k, v in r.items() if k != "pixels"} for r in rows
           if r.get("pixels") is None and "jpeg" not in r]
    out: dict[str, Any] = {"good": good, "bad": bad, "pixels": None}
    if good and all("jpeg" not in r for r in good):
        out["pixels"] = torch.stack([r.pop("pixels") for r in good])
        return out
    jpegs = [r.pop("jpeg", None) for r in good]
    decoded = [r.pop("pixels", None) for r in good]
    sizes = [0 if data is None else len(data) for data in jpegs]
    ends = torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)
    out["jpeg_data"] = torch.cat([d for d in jpegs if d is not None]) if any(sizes) \
        else torch.empty(0, dtype=torch.uint8)
    # row i's bytes: jpeg_data[starts[i]:ends[i]], or none (start -1) where a worker decoded it
    starts = torch.where(torch.tensor([d is None for d in jpegs], dtype=torch.bool), -1,
                         ends[:-1])
    out["jpeg_offsets"] = torch.stack([starts, ends[1:]], dim=1)
    worker_rows = [i for i, image in enumerate(decoded) if image is not None]
    out["decoded_rows"] = worker_rows
    out["decoded"] = torch.stack([decoded[i] for i in worker_rows]) if worker_rows else None
    return out


def batch_jpegs(batch: dict[str, Any]) -> list[Any]:
    """The collated batch's JPEGs as 1-D uint8 views into its one bytes tensor (None where a
    worker decoded the row)."""
    data, offsets = batch["jpeg_data"], batch["jpeg_offsets"].tolist()
    return [None if start < 0 else data[start:end] for start, end in offsets]


SHM = "/dev/shm"
# Use at most this share of /dev/shm's free space: other processes of the pod use it too.
SHM_SHARE = 0.5


@dataclass(frozen=True)
class ShmPlan:
    """DataLoader workers and per-worker prefetch that fit in /dev/shm, and why."""

    workers: int
    prefetch: int | None
    total_bytes: int
    free_bytes: int
    batch_bytes: int

    def describe(self) -> str:
        return (f"{SHM}: {self.total_bytes / 2**20:,.0f} MiB ({self.free_bytes / 2**20:,.0f} "
                f"MiB free); ~{self.batch_bytes / 2**20:,.1f} MiB per batch; {self.workers} "
                f"workers x prefetch {self.prefetch or 0}")


def shm_plan(workers: int, batch_bytes: int, prefetch: int = 4, path: str = SHM,
             sharers: int = 1) -> ShmPlan:
    """Workers and prefetch whose batches in flight fit in `SHM_SHARE` of /dev/shm's free
    space. Every batch a worker returns lives in shared memory until the main process drops it:
    `workers * prefetch` batches queued plus about two being taken apart. A pod's /dev/shm is
    64 MB unless a memory-backed volume is mounted there (Kubeflow: `shm_size`; Vertex AI's
    template mounts none), and a worker writing past it dies with "Bus error"
    (pytorch/pytorch#2244, kubeflow/pipelines#9893). Less prefetch first, then fewer workers,
    then none (the main process reads: slower, never a crash). `sharers`: processes planning
    for the same /dev/shm at once (one per GPU), each taking its share of the budget."""
    try:
        stat = os.statvfs(path)
        total, free = stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
    except OSError:  # no /dev/shm (not Linux): torch shares memory by other means
        return ShmPlan(workers, prefetch if workers else None, 0, 0, batch_bytes)
    budget = free * SHM_SHARE / max(1, sharers)
    for n in range(workers, 0, -1):
        for depth in range(prefetch, 0, -1):
            if (n * depth + 2) * batch_bytes <= budget:
                return ShmPlan(n, depth, total, free, batch_bytes)
    return ShmPlan(0, None, total, free, batch_bytes)


def stored_image_bytes(shard_paths: Sequence[tuple[int, str]]) -> int:
    """Mean bytes of a stored image in the first of `shard_paths`, from its parquet footer
    (what a row of JPEG bytes weighs in shared memory); 0 when unknown."""
    if not shard_paths:
        return 0
    fs, fs_path = io.filesystem(shard_paths[0][1])
    with fs.open(fs_path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if schema.IMAGE not in names or not meta.num_rows:
        return 0
    column = names.index(schema.IMAGE)
    total = sum(meta.row_group(g).column(column).total_uncompressed_size
                for g in range(meta.num_row_groups))
    return math.ceil(total / meta.num_rows)


def make_loader(rows: UnitRows, batch_size: int, workers: int, pin_memory: bool,
                row_bytes: int, sharers: int = 1) -> torch.utils.data.DataLoader[Any]:
    """The unit's DataLoader (`collate`), with workers and prefetch cut to what /dev/shm holds
    for batches of `batch_size` rows of about `row_bytes` each, shared with `sharers` loaders
    of other processes (one per GPU); logs the plan."""
    plan = shm_plan(workers, batch_size * row_bytes, sharers=sharers) if workers else None
    if plan is not None:
        log.info("embed loader: %s", plan.describe())
        if (plan.workers, plan.prefetch) != (workers, 4):
            log.warning("embed loader: /dev/shm holds too little for %d workers x prefetch 4 "
                        "(~%.1f MiB per batch): using %d workers x prefetch %s; mount a larger "
                        "memory-backed /dev/shm for full speed", workers,
                        plan.batch_bytes / 2**20, plan.workers, plan.prefetch)
        workers = plan.workers
    return torch.utils.data.DataLoader(
        rows, batch_size=batch_size, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, prefetch_factor=plan.prefetch if plan and workers else None)


class DevicePrepare:
    """Puts a collated batch's pixels on `device` as one uint8 (N, 3, S, S) tensor: JPEG bytes
    decoded on the device and resized by `resize`; worker-decoded pixels copied. A JPEG the
    device decoder refuses is retried with Pillow on the CPU, then counted as undecodable."""

    def __init__(self, device: str, resize: DeviceResize | None, pil_stage: Any) -> None:
        self.device, self.resize, self.pil_stage = device, resize, pil_stage

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "jpeg_data" not in batch:
            if batch["pixels"] is not None:
                batch["pixels"] = batch["pixels"].to(self.device, non_blocking=True)
            return batch
        assert self.resize is not None, "JPEG bytes need a device resize"
        good, jpegs = batch["good"], batch_jpegs(batch)
        images: list[Any] = [None] * len(good)
        for j, i in enumerate(batch["decoded_rows"]):
            images[i] = batch["decoded"][j]
        todo = [i for i, data in enumerate(jpegs) if data is not None]
        for i, image in zip(todo, decode_jpegs([jpegs[i] for i in todo], self.device)):
            if image is None:  # e.g. a JPEG variant nvJPEG does not decode: Pillow tries
                try:
                    image = decode_on_cpu(bytes(jpegs[i].numpy()), self.pil_stage)
                except Exception as exc:
                    mark_undecodable(good[i], exc)
                    continue
            images[i] = image
        keep = [i for i, image in enumerate(images) if image is not None]
        batch["bad"] = batch["bad"] + [{k: v for k, v in good[i].items() if k != "pixels"}
                                       for i in range(len(good)) if images[i] is None]
        batch["good"] = [good[i] for i in keep]
        batch["pixels"] = self._resized([images[i] for i in keep]) if keep else None
        return batch

    def _resized(self, images: list[Any]) -> Any:
        """Resize+crop in groups of equal size (the download step's keep_ratio output has a
        handful of shapes per shard), so a batch costs a few kernel launches, not one per
        image; returns the batch in input order."""
        assert self.resize is not None
        out: list[Any] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            image = image.to(self.device, non_blocking=True)
            images[i] = image
            if tuple(image.shape[-2:]) == self.resize.crop:
                out[i] = image  # at the crop size: the PIL stage ran in a worker (or a no-op)
            else:
                groups.setdefault(tuple(image.shape), []).append(i)
        for indices in groups.values():
            resized = self.resize(torch.stack([images[i] for i in indices]))
            for j, i in enumerate(indices):
                out[i] = resized[j]
        return torch.stack(out)


class Prefetcher:
    """Iterates `prepare(batch)` for each batch of `batches`, computed on a background thread up
    to `depth` batches ahead (on CUDA inside a side stream; the consumer's stream waits for the
    batch's event before using it). Errors of the thread are raised in the consumer."""

    _END = object()

    def __init__(self, batches: Iterable[dict[str, Any]],
                 prepare: Callable[[dict[str, Any]], dict[str, Any]], device: str,
                 depth: int = 2) -> None:
        self.batches, self.prepare, self.device, self.depth = batches, prepare, device, depth

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cuda = self.device.startswith("cuda")
        slots: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        # the current GPU is per thread: this process's (one process per GPU), not GPU 0
        gpu = torch.cuda.current_device() if cuda else None

        def work() -> None:
            if gpu is not None:
                torch.cuda.set_device(gpu)
            stream = torch.cuda.Stream() if cuda else None
            try:
                for batch in self.batches:
                    with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                        ready = self.prepare(batch)
                        event = torch.cuda.Event() if stream else None
                        if event is not None:
                            event.record(stream)
                    if not put((ready, event)):
                        return
                put(self._END)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=work, name="embed-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = slots.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                if event is not None:
                    current = torch.cuda.current_stream()
                    current.wait_event(event)
                    if batch.get("pixels") is not None:
                        batch["pixels"].record_stream(current)  # memory made on the side stream
                yield batch
        finally:
            stop.set()
            thread.join(timeout=30)
