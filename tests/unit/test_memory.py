"""The allocator settings of the download step's processes (clip_index/download/memory.py), on
glibc."""

from __future__ import annotations

import platform

import pytest

from clip_index.download import memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


def test_rss_follows_memory_in_use() -> None:
    before = memory.rss_bytes()
    block = b"x" * (64 << 20)  # written, so resident
    assert memory.rss_bytes() >= before + (60 << 20)
    del block


def test_freed_buffers_are_kept_for_reuse_and_trimmed_past_the_bound() -> None:
    assert memory.reuse_freed_memory()
    block = bytearray(b"x" * (32 << 20))  # under the 64 MiB mmap threshold: from the heap
    resident = memory.rss_bytes()
    del block
    kept = memory.rss_bytes()
    assert kept >= resident - (8 << 20)  # freed, still resident for the next image
    assert not memory.trim_if_above(1 << 50)
    assert memory.trim_if_above(0)
    assert memory.rss_bytes() < kept - (16 << 20)  # the trim gave it back
