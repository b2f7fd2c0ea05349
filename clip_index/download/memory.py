"""How the download step's processes use glibc's allocator: they churn through image-sized
buffers (bodies of hundreds of KB, decoded originals of tens of MB), which glibc by default
serves with mmap and unmaps on free, so every image faults its pages in afresh; trimming the
heap after each batch did the same. Both cost 0.55 ms of system time per image in a decode
worker (345 page faults per image; bench notes in BENCHMARKS.md). Instead the processes keep
freed memory for reuse and trim only when their RSS passes a bound, so memory stays bounded
by the largest images in flight, not by the rows done. Hand-written: no maintained library
exposes mallopt or malloc_trim."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# allocations up to this size come from the heap and are reused after free (glibc's default
# threshold is dynamic and caps at 32 MiB; a 4,000 x 3,000 RGBA original is 48 MB)
MMAP_THRESHOLD_BYTES = 64 << 20
# free memory at the top of the heap beyond this is returned at once (glibc default: 128 KiB)
TRIM_THRESHOLD_BYTES = 256 << 20
# a process whose RSS passes this after a batch trims its heap (fragmentation's bound)
TRIM_ABOVE_BYTES = 512 << 20


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - present only in glibc
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def malloc_trim() -> None:
    """Hand glibc's free heap pages back to the OS (a no-op without glibc)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def reuse_freed_memory() -> bool:
    """Make this process reuse freed image-sized buffers rather than unmap and fault them in
    again (see the module docstring). Returns whether the allocator took the settings."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and _LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def trim_if_above(limit_bytes: int = TRIM_ABOVE_BYTES) -> bool:
    """Trim the heap when RSS passes `limit_bytes`; returns whether it trimmed."""
    if rss_bytes() > limit_bytes:
        malloc_trim()
        return True
    return False
