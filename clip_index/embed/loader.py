"""Loader: one read → decode → preprocess pipeline for every shard of a work unit.

- `UnitRows`: the successful rows of all the unit's image shards, row groups divided among the
  DataLoader workers (built once; it outlives shard boundaries). On the CPU path a worker
  decodes with Pillow and runs open_clip's PIL stage (exact); on the device path it only hands
  over the JPEG bytes (`decoder`), and non-JPEG images are decoded in the worker as before.
- `collate`: stacks what can be stacked; undecodable rows go aside, to be written and counted.
- `DevicePrepare`: finishes a batch on the model's device: JPEGs decoded in one call, resized in
  groups of equal size, CPU-decoded pixels copied (non-blocking, from pinned memory).
- `Prefetcher`: runs the loader and `DevicePrepare` on a thread (and, on CUDA, a side stream)
  `depth` batches ahead of the forward pass, so reading, decoding and copying overlap compute.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """Successful rows of the image shards `jobs` [(shard, path), ...] as dicts with the meta
    columns, `_shard`, and either `pixels` (uint8 or float tensor from `transform`), `jpeg`
    (1-D uint8 tensor of the file's bytes, when `jpeg_bytes`) or an error. Row groups of all
    shards, in shard order, are dealt round-robin to the workers, so that the workers finish
    the shards in order."""

    def __init__(self, jobs: Sequence[tuple[int, str]], transform: Any,
                 jpeg_bytes: bool = False) -> None:
        self.jobs = list(jobs)
        self.transform = transform  # PIL image -> tensor (3, H, W)
        self.jpeg_bytes = jpeg_bytes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = -1
        for shard, path in self.jobs:
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
    """Stack the decoded images (or keep the JPEG bytes, one tensor each); keep the undecodable
    rows aside so they are written too."""
    good = [r for r in rows if r.get("pixels") is not None or "jpeg" in r]
    bad = [{k: v for k, v in r.items() if k != "pixels"} for r in rows
           if r.get("pixels") is None and "jpeg" not in r]
    out: dict[str, Any] = {"good": good, "bad": bad, "pixels": None}
    if good and all("jpeg" not in r for r in good):
        out["pixels"] = torch.stack([r.pop("pixels") for r in good])
        return out
    out["jpeg"] = [r.pop("jpeg", None) for r in good]  # None where the worker decoded
    out["decoded"] = [r.pop("pixels", None) for r in good]
    return out


class DevicePrepare:
    """Puts a collated batch's pixels on `device` as one uint8 (N, 3, S, S) tensor: JPEG bytes
    decoded on the device and resized by `resize`; worker-decoded pixels copied. A JPEG the
    device decoder refuses is retried with Pillow on the CPU, then counted as undecodable."""

    def __init__(self, device: str, resize: DeviceResize | None, pil_stage: Any) -> None:
        self.device, self.resize, self.pil_stage = device, resize, pil_stage

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "jpeg" not in batch:
            if batch["pixels"] is not None:
                batch["pixels"] = batch["pixels"].to(self.device, non_blocking=True)
            return batch
        assert self.resize is not None, "JPEG bytes need a device resize"
        good, jpegs, images = batch["good"], batch["jpeg"], list(batch["decoded"])
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
