"""Re-rank store: the stored vectors of a two-stage index, one faiss index file of float16
(an fp16 ``IndexScalarQuantizer``) or float32 (``IndexFlatIP``) rows in ``output_dir/faiss/``,
memory-mapped at query time; and the exact re-rank of a first stage's candidates against it,
through faiss's ``IndexRefine`` (candidates and re-rank in one C++ call).

Why a faiss file rather than a ``.npy``: faiss reads it memory-mapped (``IO_FLAG_MMAP_IFC``), so
``IndexRefine`` decodes the few hundred candidate rows with its F16C/AVX2 kernels straight from
the page cache, and a query process stays small (its resident memory is the rows it touched).
At 1M × 512, one query through `ClipIndex` went from 2.0 ms (Python re-rank) to 1.3
(BENCHMARKS.md; parts: `python -m bench.index.query_parts`). numpy reads the same mapped bytes
for the rest (the tuner's ground truth, ``ClipIndex.embeddings_of``, deduplication).

Why the file is written by hand: faiss can only serialise an index it holds in memory (13 GB
of float16 at DataComp-small's 12.8M × 512), while the build streams the rows shard by shard.
So the writer asks faiss for the header of an empty index announcing the final row count and
appends the rows after it (faiss stores the codes last, as one length-prefixed vector); the file
is then read back through faiss itself, which checks the header and the length.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from clip_index.index.filtered import (
    EXACT_SELECTION,
    exact_search,
    filtered_nprobe,
    first_stage_params,
    keep_selected,
)

log = logging.getLogger(__name__)

RERANK_FILE = "rerank_vectors.index"  # in output_dir/faiss/, beside knn.index
RERANK_DTYPES = ("float16", "float32")
CHUNK_ROWS = 16_384  # rows per chunk when streaming the store (16 MB of float16 at dim 512)
SCORE_BLOCK = 48  # rows per block of a Python re-rank: 96 KB of float32 at dim 512


def faiss_header(rows: int, dim: int, dtype: str) -> bytes:
    """Everything faiss writes before the vectors of an inner-product index of `rows` × `dim`
    `dtype` rows, ending with the length of its codes vector (counted in bytes for the scalar
    quantizer's codes, in floats for a flat index's)."""
    import faiss

    if dtype == "float16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                           faiss.METRIC_INNER_PRODUCT)
        count = rows * dim * 2
    elif dtype == "float32":
        index = faiss.IndexFlatIP(dim)
        count = rows * dim
    else:
        raise ValueError(f"rerank dtype {dtype!r}: expected one of {RERANK_DTYPES}")
    index.ntotal = rows
    empty = faiss.serialize_index(index).tobytes()
    if empty[-8:] != bytes(8):  # an empty codes vector: its 8-byte length, 0
        raise RuntimeError(f"faiss {faiss.__version__} does not end an empty index with its "
                           "codes vector: the re-rank writer needs updating")
    return empty[:-8] + np.uint64(count).tobytes()


class RerankWriter:
    """Writes the store chunk by chunk with plain file writes (no mapping, so the writer's
    resident memory stays one chunk); `close` checks the row count and reads the file back
    through faiss."""

    def __init__(self, path: str, rows: int, dim: int, dtype: str = "float16") -> None:
        if dtype not in RERANK_DTYPES:
            raise ValueError(f"rerank dtype {dtype!r}: expected one of {RERANK_DTYPES}")
        self.path, self.rows, self.dim, self.dtype = path, rows, dim, np.dtype(dtype)
        self.written = 0
        header = faiss_header(rows, dim, dtype)
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._file.write(header)

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
        RerankStore(self.path, self.rows, self.dim)  # faiss reads it back, or this raises


class RerankStore:
    """The stored vectors, memory-mapped: `index` is the faiss index over them, `take` /
    `scores` read only the rows asked for."""

    def __init__(self, path: str, rows: int | None = None, dim: int | None = None) -> None:
        """Open `path`; with `rows` / `dim` (the first stage's ntotal and d), refuse a file that
        does not match them, naming both (a stale or truncated copy would return wrong rows)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"re-rank vectors {path!r} are missing: the index's first "
                                    "stage needs them (written by `clip-index index` beside "
                                    "faiss/knn.index); copy or publish the whole faiss/ folder")
        self.path = path
        self.index: Any
        self.index, rows_view = _load_faiss(path)
        self._offset = os.path.getsize(path) - rows_view.nbytes  # the codes come last
        self._dtype = rows_view.dtype
        shape = rows_view.shape
        # rows are read as bytes: faiss's header leaves them at an odd offset, and numpy copies
        # a whole misaligned float16 array before `take` (1 GB per call at 1M × 512), while
        # a byte array is never misaligned; the few rows taken are then viewed as floats
        self._bytes = rows_view.view(np.uint8).reshape(shape[0], -1)
        if rows is not None and shape[0] != rows:
            raise ValueError(f"re-rank vectors {path!r} hold {shape[0]} rows but the first stage "
                             f"holds {rows} vectors: the files come from different builds")
        if dim is not None and shape[1] != dim:
            raise ValueError(f"re-rank vectors {path!r} have dim {shape[1]} but the first stage "
                             f"has dim {dim}: the files come from different builds")
        self._dim = int(shape[1])
        if len(self) and self._read_bytes(len(self) - 1, 1) != self._bytes[-1].tobytes():
            raise ValueError(f"re-rank vectors {path!r}: the rows do not end the file, as "
                             "iter_chunks reads them; faiss's format changed?")
        _no_readahead(self._bytes)

    def _read_bytes(self, start: int, rows: int) -> bytes:
        """Rows start.. as bytes, read from the file (not through the mapping)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset + start * self._bytes.shape[1])
            return f.read(rows * self._bytes.shape[1])

    def __len__(self) -> int:
        return int(self._bytes.shape[0])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        return str(self._dtype.name)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` as stored (float16 or float32), copied out of the mapping."""
        return np.take(self._bytes, ids, axis=0).view(self._dtype)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order, repeats allowed) as a float32 (len(ids), dim) array."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")  # ascending reads: neighbouring pages together
        rows = self.rows(ids[order])
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        out[order] = widen_float16(rows) if rows.dtype == np.float16 else rows
        return out

    def scores(self, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Exact inner products of rows `ids` (sorted: ascending reads) with the float32 query
        `q`, SCORE_BLOCK rows at a time, widened into one reused buffer that stays below
        glibc's mmap threshold (128 KiB), so it comes from the heap rather than a fresh mapping
        (the tuner's ground truth; queries go through `TwoStageIndex`)."""
        out = np.empty(len(ids), dtype=np.float32)
        buffer = np.empty((SCORE_BLOCK, self.dim), dtype=np.float32)
        for start in range(0, len(ids), SCORE_BLOCK):
            rows = self.rows(ids[start:start + SCORE_BLOCK])
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
        itemsize = self._bytes.shape[1]
        with open(self.path, "rb") as f:
            for start in range(0, len(self), rows):
                m = min(rows, len(self) - start)
                f.seek(self._offset + start * itemsize)
                flat = np.fromfile(f, dtype=self._dtype, count=m * self.dim).reshape(m, self.dim)
                # float16 widened through faiss's F16C decoder (exact, ~3x numpy's cast)
                yield start, (widen_float16(flat) if flat.dtype == np.float16
                              else flat.astype(np.float32, copy=False))


def _load_faiss(path: str) -> tuple[Any, np.ndarray]:
    """The store's faiss index, memory-mapped, and a (rows, dim) numpy view of its codes (the
    same mapped bytes: valid while the index lives)."""
    import faiss

    try:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:  # truncated, or not a faiss file at all
        reason = str(exc).strip().splitlines()[-1]
        raise ValueError(f"re-rank vectors {path!r} cannot be read ({reason}): expected a faiss "
                         "fp16 scalar-quantizer or flat inner-product index of the stored "
                         "vectors, as `clip-index index` writes") from exc
    if isinstance(index, faiss.IndexScalarQuantizer) and \
            index.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        dtype: type = np.float16
    elif isinstance(index, faiss.IndexFlat):
        dtype = np.float32
    else:
        raise ValueError(f"re-rank vectors {path!r} are a faiss {type(index).__name__}: "
                         "expected an fp16 IndexScalarQuantizer or an IndexFlatIP")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"re-rank vectors {path!r} use faiss metric {index.metric_type}: "
                         "expected inner product")
    codes = faiss.rev_swig_ptr(index.codes.data(), index.codes.size())
    return index, codes.view(dtype).reshape(int(index.ntotal), int(index.d))


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


def _no_readahead(rows: np.ndarray) -> None:
    """Ask the kernel not to read ahead around the rows a query touches: a re-rank reads a
    few hundred rows scattered over the file, and on a cold page cache readahead would read
    ~128 KiB from disk for each 1 KiB row. madvise through libc, since the mapping is faiss's
    (or numpy's) and Python's mmap module cannot name it. (Pages already cached are still
    mapped around a touched one, so the resident set grows as queries run: those are clean
    file pages, counted as RssFile, which the kernel drops under memory pressure.)"""
    if not hasattr(mmap, "MADV_RANDOM") or not rows.size:
        return
    start = rows.ctypes.data
    aligned = start - start % mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(rows.nbytes + start - aligned),
                    mmap.MADV_RANDOM) != 0:  # not fatal: only readahead is lost
        log.debug("madvise(MADV_RANDOM) on the re-rank vectors failed: errno %d",
                  ctypes.get_errno())


def dot_rows(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Inner product of each row with `q`, without BLAS: a few hundred rows are far too few for
    BLAS's threads, whose wake-up beside faiss's OpenMP threads measured 0.5 ms per call on 2
    cores against 0.02 ms for this loop (numpy's einsum, one thread)."""
    return np.einsum("ij,j->i", rows, q)


def rerank(store: RerankStore, queries: np.ndarray, candidates: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate ids (-1 = none), best k first,
    in Python: what faiss's ``IndexRefine`` computes, as the reference the tests and
    `bench.index.query_parts` hold it against.

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
        # IndexRefine holds plain pointers to both indexes: self keeps them alive
        self.refine: Any = faiss.IndexRefine(first_stage, store.index)
        self._params: dict[tuple[int, int], Any] = {}

    @staticmethod
    def _refine_params(k: int, fetch: int, base: Any) -> Any:
        """IndexRefine's parameters for `fetch` candidates re-ranked to k (k_factor: it asks
        the first stage for int(k · k_factor)); `base`: the first stage's own (nprobe), which
        faiss's wrapper keeps alive with the result (`referenced_objects`)."""
        import faiss

        return faiss.IndexRefineSearchParameters(k_factor=(fetch + 0.5) / k,
                                                 base_index_params=base)

    def search(self, queries: np.ndarray, k: int,
               selection: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for (n, dim) normalised float32 queries: the first stage's
        max(depth, k) candidates, re-ranked exactly. A query whose probed lists hold fewer
        than k vectors (a large k) is searched again with more lists, so k results come back
        whenever the index holds k vectors.

        selection: the rows allowed (`clip_index.search.filters.Selection`: `selector`, a
        faiss IDSelector; `count`; `contains(ids)`; `ids()`), applied inside the first stage's
        scan and checked again after the re-rank; k results come back whenever `count` >= k.
        A selection of at most EXACT_SELECTION rows is searched exactly over those rows."""
        if selection is not None and selection.count <= EXACT_SELECTION:
            return exact_search(self.store, queries, k, selection)
        fetch = min(max(self.depth, k), self.ntotal)
        nprobe = None
        if selection is not None and self.ivf is not None:
            nprobe = filtered_nprobe(int(self.ivf.nprobe), int(self.ivf.nlist),
                                     selection.count / self.ntotal)
        scores, ids = self._search(queries, k, fetch, nprobe, selection)
        need = min(k, self.ntotal if selection is None else selection.count)
        if need == 0:
            return scores, ids
        # results come best first, faiss's -1 padding last: a query is short of `need`
        # results exactly when its need-th is padding
        padded = ids[:, need - 1] < 0
        short = np.flatnonzero(padded) if padded.any() else np.empty(0, dtype=np.int64)
        nprobe = nprobe or (int(self.ivf.nprobe) if self.ivf is not None else 0)
        while len(short) and self.ivf is not None and nprobe < self.ivf.nlist:
            nprobe = min(4 * nprobe, int(self.ivf.nlist))
            more_scores, more = self._search(queries[short], k, fetch, nprobe, selection)
            scores[short], ids[short] = more_scores, more
            short = short[(more >= 0).sum(axis=1) < need]
        return scores, ids

    def _search(self, queries: np.ndarray, k: int, fetch: int, nprobe: int | None,
                selection: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """`fetch` candidates per query (with `nprobe` lists when given), re-ranked to k."""
        base = first_stage_params(self.first_stage, self.ivf, nprobe, selection)
        if base is None:  # the usual call: its parameters made once (~10 µs a query saved)
            params = self._params.get((k, fetch))
            if params is None:
                params = self._params[k, fetch] = self._refine_params(k, fetch, None)
        else:
            params = self._refine_params(k, fetch, base)
        scores, ids = self.refine.search(queries, k, params=params)
        scores[ids < 0] = -np.inf  # faiss pads with -FLT_MAX
        if selection is not None:  # the re-rank's own check: never return a filtered-out row
            scores, ids = keep_selected(scores, ids, selection)
        return scores, ids
