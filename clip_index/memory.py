"""Returning freed memory to the OS: long-running steps that churn through image-sized buffers
fragment glibc's heap, so their RSS creeps up with the rows done although little is live."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - present only in glibc
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def malloc_trim() -> None:
    """Hand glibc's free heap pages back to the OS (a no-op without glibc). Hand-written:
    no maintained library exposes malloc_trim."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
