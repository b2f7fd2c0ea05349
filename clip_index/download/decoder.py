"""The decode pool of the download step: a process pool (one worker per core) that decodes,
resizes and re-encodes image bodies while the event loop keeps fetching.

Bodies are sent in batches (one round trip for several images once every worker is busy, one
image at a time while some are idle), the config is sent once per worker, and a worker that
dies (a decoder crash, the OOM killer) costs the pool a restart, not the shard: the bodies of
the lost batches are retried one at a time (quarantine), and a body that kills a worker there
too is recorded as `failed_to_decode: decoder_crashed`. Workers that die before the pool has
decoded anything at all (an environment that cannot run them) end the shard with
`DecoderUnavailable` instead of recording every row as a crash.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from clip_index.config import DownloadConfig
from clip_index.download.resize import ProcessedImage, init_worker, process_batch
from clip_index.status import Status

log = logging.getLogger(__name__)

Result = ProcessedImage | tuple[str, str]
BatchFunction = Callable[[list[bytes]], list[Result]]
_Pending = tuple[bytes, "asyncio.Future[Result]", bool]  # body, its future, already retried
# worker deaths tolerated before the first decoded batch: past this, the workers cannot run here
MAX_DEATHS_BEFORE_ANY_IMAGE = 3


class DecoderUnavailable(RuntimeError):
    """The decode workers cannot run at all (not one image's fault): the shard must stop."""


def available_cpus() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class DecodePool:
    """Use as an async context manager inside the event loop; `await process(body)`."""

    def __init__(self, config: DownloadConfig, workers: int = 0, batch_size: int = 16,
                 function: BatchFunction = process_batch) -> None:
        self.config = config
        self.workers = workers or config.decode_workers or available_cpus()
        self.batch_size = batch_size
        self.function = function
        self.restarts = 0
        # forkserver: never fork a process that runs the event loop's threads; the server
        # imports Pillow once, so each worker starts fast
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["clip_index.download.resize"])
        self._executor = self._new_executor()
        self._pending: list[_Pending] = []
        self._in_flight = 0
        self._quarantine: collections.deque[_Pending] = collections.deque()
        self._quarantine_busy = False
        self._queued = 0  # bodies handed in and not yet answered
        self._decoded_any = False
        self._broken: DecoderUnavailable | None = None
        self._room = asyncio.Event()
        self._room.set()

    @property
    def max_queued(self) -> int:
        """Bodies queued or in the workers beyond which `ready` waits (two batches each)."""
        return 2 * self.workers * self.batch_size

    async def ready(self) -> None:
        """Wait until the pool has room: callers start new downloads only then, so that when
        decoding is the bottleneck, bodies do not pile up in memory waiting for it."""
        while self._queued >= self.max_queued:
            self._room.clear()
            await self._room.wait()

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=self._ctx, initializer=init_worker,
            initargs=(self.config,))

    async def __aenter__(self) -> DecodePool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def process(self, body: bytes) -> Result:
        """The processed image, or (status, error) when it cannot be used. Raises
        DecoderUnavailable when the workers cannot run at all."""
        if self._broken is not None:
            raise self._broken
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((body, future, False))
        self._queued += 1
        self._flush()
        try:
            return await future
        finally:
            self._queued -= 1
            if self._queued < self.max_queued:
                self._room.set()

    def _flush(self) -> None:
        # keep every worker busy: send at once while fewer than two batches per worker are
        # out; past that, let bodies gather into full batches (fewer round trips under load)
        while self._pending and (self._in_flight < 2 * self.workers
                                 or len(self._pending) >= self.batch_size):
            batch = self._pending[: self.batch_size]
            del self._pending[: self.batch_size]
            self._submit(batch)

    def _submit(self, batch: list[_Pending], quarantined: bool = False) -> None:
        executor = self._executor
        try:
            submitted = executor.submit(self.function, [body for body, _, _ in batch])
        except (BrokenProcessPool, RuntimeError) as exc:
            self._lost(batch, executor, exc, quarantined)
            return
        self._in_flight += 1
        wrapped = asyncio.wrap_future(submitted)
        wrapped.add_done_callback(lambda done: self._done(done, batch, executor, quarantined))

    def _done(self, done: asyncio.Future[list[Result]], batch: list[_Pending],
              executor: concurrent.futures.Executor, quarantined: bool) -> None:
        self._in_flight -= 1
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if exc is None:
            self._decoded_any = True
            for (_, future, _), result in zip(batch, done.result(), strict=True):
                if not future.done():
                    future.set_result(result)
        elif isinstance(exc, BrokenProcessPool):
            self._lost(batch, executor, exc, quarantined)
        else:  # e.g. a result that cannot be unpickled: fail these rows, keep the pool
            for _, future, _ in batch:
                if not future.done():
                    future.set_result((Status.FAILED_TO_DECODE.value,
                                       f"decode_error: {type(exc).__name__}: {exc}"[:300]))
        if quarantined:
            self._quarantine_busy = False
        self._drain_quarantine()
        self._flush()

    def _lost(self, batch: list[_Pending], executor: concurrent.futures.Executor,
              exc: BaseException, quarantined: bool) -> None:
        """A worker died: restart the pool (once per death) and retry the lost bodies one at
        a time in quarantine, so that a body that kills a worker there is the one to blame."""
        if self._broken is not None:
            self._fail(batch)
            return
        if executor is self._executor:
            self.restarts += 1
            if not self._decoded_any and self.restarts >= MAX_DEATHS_BEFORE_ANY_IMAGE:
                self._broken = DecoderUnavailable(
                    f"decode workers died {self.restarts} times before decoding any image "
                    f"(last: {exc!r}): they cannot run in this environment")
                executor.shutdown(wait=False, cancel_futures=True)
                self._fail(batch + self._pending + list(self._quarantine))
                self._pending.clear()
                self._quarantine.clear()
                return
            log.warning("decode worker died (%s): restarting the pool (restart %d)",
                        exc, self.restarts)
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
        for body, future, retried in batch:
            if future.done():
                continue
            if retried and quarantined:
                future.set_result((Status.FAILED_TO_DECODE.value,
                                   "decoder_crashed: the decoding process died on this image"))
            else:
                self._quarantine.append((body, future, True))

    def _fail(self, batch: list[_Pending]) -> None:
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(self._broken or DecoderUnavailable("decode pool closed"))

    def _drain_quarantine(self) -> None:
        if self._quarantine and not self._quarantine_busy:
            self._quarantine_busy = True
            self._submit([self._quarantine.popleft()], quarantined=True)
