"""Per-shard and per-step statistics, and a progress reporter that logs counts, rates and ETA."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clip_index.schema import Status

log = logging.getLogger(__name__)


@dataclass
class ShardStats:
    """What one step did to one shard: rows in, rows out by status, error kinds, bytes, time."""

    shard: int
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    skipped: bool = False  # True when the shard was already complete and was not redone

    @property
    def successes(self) -> int:
        return self.statuses.get(Status.SUCCESS.value, 0)

    @property
    def failures(self) -> int:
        return self.rows - self.successes

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def count(self, status: str, error: str | None = None) -> None:
        self.rows += 1
        self.statuses[status] += 1
        if error:
            self.errors[error_kind(error)] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "rows": self.rows,
            "successes": self.successes,
            "failures": self.failures,
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(self.errors.most_common(20)),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 2),
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardStats:
        return cls(
            shard=int(d["shard"]),
            rows=int(d["rows"]),
            statuses=Counter({k: int(v) for k, v in d.get("statuses", {}).items()}),
            errors=Counter({k: int(v) for k, v in d.get("errors", {}).items()}),
            bytes=int(d.get("bytes", 0)),
            seconds=float(d.get("seconds", 0.0)),
            skipped=bool(d.get("skipped", False)),
        )


def error_kind(error: str) -> str:
    """The kind of an error message: the part before the first ':' (``http_404: Not Found``)."""
    return error.split(":", 1)[0].strip()[:80]


def merge(stats: list[ShardStats]) -> dict[str, Any]:
    """Totals over shards, as plain JSON-able values (for artifact metadata and reports)."""
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for s in stats:
        statuses.update(s.statuses)
        errors.update(s.errors)
    rows = sum(s.rows for s in stats)
    seconds = sum(s.seconds for s in stats)
    successes = statuses.get(Status.SUCCESS.value, 0)
    return {
        "shards": len(stats),
        "rows": rows,
        "successes": successes,
        "failures": rows - successes,
        "success_rate": round(successes / rows, 4) if rows else 0.0,
        "statuses": dict(sorted(statuses.items())),
        "errors": dict(errors.most_common(20)),
        "bytes": sum(s.bytes for s in stats),
        "seconds": round(seconds, 3),
    }


def check_failure_rate(stats: Sequence[ShardStats], max_failure_rate: float, step: str) -> None:
    """Raise when a task's shards, together, have no success at all or more failures than
    allowed. Checked once every shard of the task is written, so one bad shard (a dead host)
    neither stops the others nor is lost: its rows are on disk with their reasons."""
    rows = sum(s.rows for s in stats)
    successes = sum(s.successes for s in stats)
    if not rows:
        return
    totals = merge(list(stats))
    where = f"shards {_shard_span(stats)}"
    if successes == 0:
        raise RuntimeError(f"{step}: {where} had 0 successes out of {rows} rows "
                           f"(statuses {totals['statuses']}, top errors "
                           f"{dict(list(totals['errors'].items())[:3])})")
    if (rows - successes) / rows > max_failure_rate:
        raise RuntimeError(f"{step}: {where} failure rate {(rows - successes) / rows:.1%} passes "
                           f"max_failure_rate={max_failure_rate} (statuses {totals['statuses']})")


def _shard_span(stats: Sequence[ShardStats]) -> str:
    numbers = sorted(s.shard for s in stats)
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"


@dataclass(frozen=True)
class UnitResult:
    """What one task did over its work unit: its shards, one after another, each a row of
    `shards`, plus `extra` facts shared by all of them (the embed step's model)."""

    output_dir: str
    shards: list[ShardStats]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        """Totals, rates and a compact per-shard table, for the task's output artifact: the
        Vertex console shows one artifact per unit, with every shard's counts inside."""
        totals = merge(self.shards)
        done = [s for s in self.shards if not s.skipped]
        busy_s = sum(s.seconds for s in done)
        return {
            "output_dir": self.output_dir,
            **totals,
            "shard_numbers": _shard_span(self.shards) if self.shards else "",
            "shards_skipped": len(self.shards) - len(done),
            "seconds": round(self.seconds, 2),
            "images_per_s": round(sum(s.successes for s in done) / busy_s, 2) if busy_s else 0.0,
            "per_shard": [{"shard": s.shard, "rows": s.rows, "successes": s.successes,
                           "seconds": round(s.seconds, 2), "skipped": s.skipped}
                          for s in self.shards],
            **self.extra,
        }


class Progress:
    """Logs `done/total`, rate and ETA every `every_s` seconds; a tqdm bar when on a terminal."""

    def __init__(self, label: str, total: int, every_s: float = 5.0) -> None:
        self.label = label
        self.total = total
        self.every_s = every_s
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="row", leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        return f"{self.label}: {self.done}/{self.total} rows, {rate:.1f} rows/s, ETA {eta}"

    def close(self) -> float:
        """Stop; log the final line; return the elapsed seconds."""
        if self._bar is not None:
            self._bar.close()
        log.info("%s (done)", self.line())
        return time.monotonic() - self.start
