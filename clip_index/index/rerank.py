"""Re-rank store: the stored vectors of a two-stage index, one ``.npy`` file (n, dim) of float16
(or float32) in ``output_dir/faiss/``, memory-mapped at query time; and the exact re-rank of a
first stage's candidates against it.

Hand-written rather than faiss's ``IndexRefine``/``IndexRefineFlat``: those hold the refine
vectors in RAM inside the index file (1 GB of float16 per 1M × 512), while the point here is that
a query process maps the file and touches only the few hundred rows it re-ranks. A plain ``.npy``
is also readable by numpy alone (``np.load(path, mmap_mode="r")``).
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

RERANK_FILE = "rerank_vectors.npy"  # in output_dir/faiss/, beside knn.index
RERANK_DTYPES = ("float16", "float32")
CHUNK_ROWS = 16_384  # rows per chunk when streaming the store (16 MB of float16 at dim 512)
SCORE_BLOCK = 48  # rows per block of a re-rank: 96 KB of float32 at dim 512


class RerankWriter:
    """Writes a (rows, dim) ``.npy`` of `dtype` chunk by chunk with plain file writes (no
    mapping, so the writer's resident memory stays one chunk); `close` checks the row count."""

    def __init__(self, path: str, rows: int, dim: int, dtype: str = "float16") -> None:
        if dtype not in RERANK_DTYPES:
            raise ValueError(f"rerank dtype {dtype!r}: expected one of {RERANK_DTYPES}")
        self.path, self.rows, self.dim, self.dtype = path, rows, dim, np.dtype(dtype)
        self.written = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (rows, dim)}
        np.lib.format.write_array_header_2_0(self._file, header)

    def append(self, vectors: np.ndarray) -> None:
        """Append rows (any float dtype, shape (m, dim)); they are cast to the store's dtype."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"re-rank rows of shape {vectors.shape}: expected (m, {self.dim})")
        if self.written + len(vectors) > self.rows:
            raise RuntimeError(f"{self.path}: more than the {self.rows} rows announced")
        self._file.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        self.written += len(vectors)

    def close(self) -> None:
        self._file.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.path}: {self.written} rows written, {self.rows} announced")


class RerankStore:
    """The stored vectors, memory-mapped: ``take`` reads only the rows asked for."""

    def __init__(self, path: str, rows: int | None = None, dim: int | None = None) -> None:
        """Open `path`; with `rows` / `dim` (the first stage's ntotal and d), refuse a file that
        does not match them, naming both (a stale or truncated copy would return wrong rows)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"re-rank vectors {path!r} are missing: the index's first "
                                    "stage needs them (written by `clip-index index` beside "
                                    "faiss/knn.index); copy or publish the whole faiss/ folder")
        try:
            self.vectors: np.ndarray = np.load(path, mmap_mode="r")
        except ValueError as exc:  # a truncated file: numpy cannot map the announced shape
            raise ValueError(f"re-rank vectors {path!r} cannot be read ({exc}): expected a "
                             f"(vectors, dim) .npy of {' or '.join(RERANK_DTYPES)}") from exc
        shape, dtype = self.vectors.shape, self.vectors.dtype
        if len(shape) != 2 or dtype.name not in RERANK_DTYPES:
            raise ValueError(f"re-rank vectors {path!r} are {dtype.name} of shape {shape}: "
                             f"expected a (vectors, dim) array of {' or '.join(RERANK_DTYPES)}")
        if rows is not None and shape[0] != rows:
            raise ValueError(f"re-rank vectors {path!r} hold {shape[0]} rows but the first stage "
                             f"holds {rows} vectors: the files come from different builds")
        if dim is not None and shape[1] != dim:
            raise ValueError(f"re-rank vectors {path!r} have dim {shape[1]} but the first stage "
                             f"has dim {dim}: the files come from different builds")
        self.path = path
        _no_readahead(self.vectors)
        # the same memory as a plain ndarray: np.memmap runs Python code on every indexing
        self._rows = np.asarray(self.vectors)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.vectors.dtype.name)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order, repeats allowed) as a float32 (len(ids), dim) array."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")  # ascending reads: neighbouring pages together
        rows = np.take(self._rows, ids[order], axis=0)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        out[order] = widen_float16(rows) if rows.dtype == np.float16 else rows
        return out

    def scores(self, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Exact inner products of rows `ids` (sorted: ascending reads) with the float32 query
        `q`, SCORE_BLOCK rows at a time, widened into one reused buffer that stays below
        glibc's mmap threshold (128 KiB), so it comes from the heap rather than a fresh mapping.
        200 candidates: 0.37 ms, against 0.61 widened all at once with numpy's cast
        (`python -m bench.index.query_parts`)."""
        out = np.empty(len(ids), dtype=np.float32)
        buffer = np.empty((SCORE_BLOCK, self.dim), dtype=np.float32)
        for start in range(0, len(ids), SCORE_BLOCK):
            rows = np.take(self._rows, ids[start:start + SCORE_BLOCK], axis=0)
            m = len(rows)
            if rows.dtype == np.float16:
                widen_float16(rows, buffer)
                rows = buffer[:m]
            out[start:start + m] = dot_rows(rows, q)
        return out

    def iter_chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 rows) over the whole store, read with file reads rather than through
        the mapping, so a full pass (ground truth, adding to the first stage) does not leave
        the whole file in this process's resident set."""
        offset = int(getattr(self.vectors, "offset", 0))
        itemsize = self.vectors.dtype.itemsize * self.dim
        with open(self.path, "rb") as f:
            for start in range(0, len(self), rows):
                m = min(rows, len(self) - start)
                f.seek(offset + start * itemsize)
                flat = np.fromfile(f, dtype=self.vectors.dtype, count=m * self.dim)
                yield start, flat.reshape(m, self.dim).astype(np.float32)


def widen_float16(half: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(m, dim) float16 rows → float32, exactly, through faiss's fp16 scalar quantizer (its
    decoder uses the CPU's F16C instructions): 26 µs for 48 × 512 values, where numpy 1.26's
    own cast (no F16C path) takes 93 (`python -m bench.index.query_parts`). Into `out` (at
    least m rows, C-contiguous float32) when given."""
    half = np.ascontiguousarray(half, dtype=np.float16)
    m, dim = half.shape
    if out is None:
        out = np.empty((m, dim), dtype=np.float32)
    elif out.dtype != np.float32 or not out.flags.c_contiguous or out.shape[0] < m or \
            out.shape[1] != dim:
        raise ValueError(f"out of {out.dtype} {out.shape}: expected C-contiguous float32 "
                         f"of at least ({m}, {dim})")
    import faiss

    _fp16_decoder(dim).sa_decode_c(m, faiss.swig_ptr(half.view(np.uint8)), faiss.swig_ptr(out))
    return out[:m]


@functools.cache
def _fp16_decoder(dim: int) -> Any:
    import faiss

    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def _no_readahead(vectors: np.ndarray) -> None:
    """Ask the kernel not to read ahead around the rows a query touches: a re-rank reads a
    few hundred rows scattered over the file, and on a cold page cache readahead would read
    ~128 KiB from disk for each 1 KiB row. (Pages already cached are still mapped around a
    touched one, so the resident set grows as queries run: those are clean file pages,
    counted as RssFile, which the kernel drops under memory pressure.)"""
    base = getattr(vectors, "_mmap", None)
    if base is not None and hasattr(mmap, "MADV_RANDOM"):
        try:
            base.madvise(mmap.MADV_RANDOM)
        except OSError as exc:  # not fatal: only readahead is lost
            log.debug("madvise(MADV_RANDOM) on the re-rank vectors failed: %s", exc)


def dot_rows(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Inner product of each row with `q`, without BLAS: a few hundred rows are far too few for
    BLAS's threads, whose wake-up beside faiss's OpenMP threads measured 0.5 ms per call on 2
    cores against 0.02 ms for this loop (numpy's einsum, one thread)."""
    return np.einsum("ij,j->i", rows, q)


def rerank(store: RerankStore, queries: np.ndarray, candidates: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate ids (-1 = none), best k first.

    queries: (n, dim) float32, normalised; candidates: (n, depth) int64 from the first stage.
    Returns (scores, ids) of shape (n, k), padded with -inf / -1 like faiss.
    """
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (q, cand) in enumerate(zip(queries, candidates)):
        cand = np.sort(cand[cand >= 0])  # ascending reads (faiss returns each id once)
        if not len(cand):
            continue
        exact = store.scores(cand, q)
        best = np.argsort(-exact, kind="stable")[:k]
        scores[row, :len(best)], ids[row, :len(best)] = exact[best], cand[best]
    return scores, ids


class TwoStageIndex:
    """A compressed faiss first stage that proposes `depth` candidates and the exact re-rank
    of them from the memory-mapped store; `search` has faiss's signature and result shapes."""

    def __init__(self, first_stage: Any, store: RerankStore, depth: int) -> None:
        import faiss

        self.first_stage, self.store, self.depth = first_stage, store, int(depth)
        self.d, self.ntotal = int(first_stage.d), int(first_stage.ntotal)
        try:
            self.ivf: Any = faiss.extract_index_ivf(first_stage)
        except RuntimeError:
            self.ivf = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for (n, dim) normalised float32 queries: the first stage's
        max(depth, k) candidates, re-ranked exactly. A query whose probed lists hold fewer
        than k vectors (a large k) is searched again with more lists, so k results come back
        whenever the index holds k vectors."""
        import faiss

        fetch = min(max(self.depth, k), self.ntotal)
        _, candidates = self.first_stage.search(queries, fetch)
        need = min(k, self.ntotal)
        short = np.flatnonzero((candidates >= 0).sum(axis=1) < need)
        nprobe = int(self.ivf.nprobe) if self.ivf is not None else 0
        while len(short) and self.ivf is not None and nprobe < self.ivf.nlist:
            nprobe = min(4 * nprobe, int(self.ivf.nlist))
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            _, more = self.first_stage.search(queries[short], fetch, params=params)
            candidates[short] = more
            short = short[(more >= 0).sum(axis=1) < need]
        return rerank(self.store, queries, candidates, k)
