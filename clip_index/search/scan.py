"""Exact scan: every stored vector of an index scored against many prompts in one pass, block by
block (a blocked matrix product prompts × block), keeping the (prompt, faiss id, score) triples
whose float32 inner product is at least a threshold.

Why a scan and not a range search in the first stage: the first stage's scores are PQ
approximations with no error bound, so no margin below the threshold makes its candidate set
provably complete; the scan reads the stored vectors themselves (the re-rank store, widened from
float16 exactly) and is exact by construction. At 1M × 512 and 100 prompts it took 8–17 s on
2 loaded cores: about a float32 brute force over the vectors in memory plus one read of the
store (BENCHMARKS.md, "Export every match"; `python -m bench.index.export`).

Where the vectors come from (`open_vectors`): the re-rank store of a two-stage index; the flat
storage of a one-stage exact index (Flat, HNSW over flat storage), viewed in place; else the
``data/`` shards, normalised as the index step normalised them (row i of the pass = faiss id i).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_index import io, schema
from clip_index.index.rerank import RerankStore
from clip_index.vectors import normalise

if TYPE_CHECKING:
    from clip_index.search.searcher import ClipIndex

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0  # seconds between progress lines


@dataclass
class VectorSource:
    """The exact stored vectors of an index, `rows` × `dim`, read block by block as float32."""

    what: str  # for logs and the summary: where the vectors come from
    rows: int
    dim: int
    _blocks: Callable[[int], Iterator[tuple[int, np.ndarray]]]  # block_rows → blocks

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first faiss id, (m, dim) float32 rows) covering ids 0..rows-1 in order."""
        expected = 0
        for start, rows in self._blocks(block_rows):
            if start != expected or rows.shape[1] != self.dim:
                raise RuntimeError(f"{self.what}: a block of shape {rows.shape} at id {start}, "
                                   f"expected id {expected} and dim {self.dim}")
            expected += len(rows)
            yield start, rows
        if expected != self.rows:
            raise RuntimeError(f"{self.what} holds {expected} vectors but the index holds "
                               f"{self.rows}: the folder is inconsistent")


def open_vectors(index: ClipIndex) -> VectorSource:
    """The exact vectors of an opened `ClipIndex` (see the module docstring for the order of
    preference); ValueError naming the folder when it has none (a compressed one-stage index
    without ``data/``, the reference layout)."""
    import faiss

    n, dim = len(index), index.dim
    store: RerankStore | None = index.store
    if store is not None:
        return VectorSource(f"re-rank store {store.path} ({store.dtype}, memory-mapped)", n,
                            dim, lambda rows: store.iter_chunks(rows))
    if index.layout.kind != "clip-index" or not index.layout.normalised:
        raise ValueError(f"{index.location}: the reference layout stores compressed vectors that "
                         "were not L2-normalised, so no exact scan of them exists: export from a "
                         "clip-index output folder (`clip-index run` / `clip-index index`)")
    flat = _flat_storage(faiss.downcast_index(index.index))
    if flat is not None:
        vectors = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
        return VectorSource(f"{index.infos.get('index_key') or 'flat'} index's stored vectors",
                            n, dim, lambda rows: ((s, vectors[s:s + rows])
                                                  for s in range(0, n, rows)))
    data_dir = io.join(index.output_dir, schema.DATA_DIR)
    shards = io.list_shards(data_dir)
    if not shards:
        raise ValueError(f"{index.location}: a one-stage {index.infos.get('index_key')} index "
                         "holds its vectors compressed or in lists, not as one flat array, and "
                         "the folder has no data/ shards to read the exact ones from: export "
                         "needs data/ (or a two-stage index)")
    from clip_index.index.twostage import shard_rows

    rows_in_data = sum(shard_rows(shards))  # from the footers: checked before the scan
    if rows_in_data != n:
        raise ValueError(f"{data_dir} holds {rows_in_data} rows but the index holds {n} "
                         "vectors: the data changed after the index was built; rebuild it "
                         "(`clip-index index`)")
    return VectorSource(f"{data_dir} (normalised as the index step does)", n, dim,
                        lambda rows: _data_blocks(shards, rows))


def _flat_storage(index: Any) -> Any:
    """The IndexFlat holding `index`'s vectors uncompressed, or None."""
    import faiss

    if isinstance(index, faiss.IndexFlat):
        return index
    if isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        return storage if isinstance(storage, faiss.IndexFlat) else None
    return None


def _data_blocks(shards: list[str], block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """data/ embeddings in shard order (the order the index step added them), normalised, in
    blocks of `block_rows` (the last one shorter)."""
    pending: list[np.ndarray] = []
    held, start = 0, 0
    for path in shards:
        for batch in io.iter_parquet_batches(path, [schema.EMBEDDING], batch_rows=block_rows):
            if batch.num_rows == 0:
                continue
            column = batch.column(0)
            flat = column.flatten().to_numpy(zero_copy_only=False)
            pending.append(normalise(flat.reshape(batch.num_rows, -1)))
            held += batch.num_rows
            while held >= block_rows:
                rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield start, rows[:block_rows]
                start += block_rows
                pending, held = [rows[block_rows:]], held - block_rows
    if held:
        yield start, np.concatenate(pending)


@dataclass(frozen=True)
class Matches:
    """Every (prompt, faiss id, score) at or above the threshold, ordered by prompt, then score
    descending, then faiss id ascending; `rank` counts from 1 within each prompt; `capped`: the
    prompts that had more matches than `max_per_prompt` (their best ones were kept)."""

    prompt: np.ndarray  # int32, index into the prompts
    id: np.ndarray  # int64, faiss id
    score: np.ndarray  # float32: the inner product (float64 sum, rounded once)
    rank: np.ndarray  # int32
    capped: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(len(self.id))

    def per_prompt(self, prompts: int) -> np.ndarray:
        """Matches of each prompt, shape (prompts,)."""
        return np.bincount(self.prompt, minlength=prompts)


def scan(queries: np.ndarray, source: VectorSource, threshold: float, block_rows: int,
         max_per_prompt: int = 0) -> Matches:
    """Score every vector of `source` against every row of `queries` ((p, dim) float32,
    normalised) in one pass of blocks of `block_rows` vectors; keep the pairs whose inner
    product is >= threshold, at most the best `max_per_prompt` per prompt (0 = all).

    Exact: one float32 matrix product per block proposes every pair within a margin of the
    threshold (wider than float32's error), and `exact_scores` decides and scores them, so the
    result is the brute force's, independent of the block size. Memory: a block's rows and
    its (p, block_rows) scores, plus the matches kept."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    # float32 BLAS errs by at most ~dim·2⁻²⁴ on unit vectors (3e-5 at 512), and by a bit
    # that depends on the block's shape: it only proposes pairs, with a margin twice that
    margin = max(1e-4, 2.0 * q.shape[1] * 2.0**-24)
    bound = np.float32(threshold - margin)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    held, capped = 0, set()
    progress = _Progress(source.rows, len(q))
    for start, rows in source.blocks(block_rows):
        scores = q @ rows.T  # (p, m): one BLAS call for every prompt
        p, j = np.nonzero(scores >= bound)
        exact = exact_scores(q, rows, p, j)
        keep = exact >= threshold
        if keep.any():
            found.append((p[keep].astype(np.int32), j[keep].astype(np.int64) + start,
                          exact[keep].astype(np.float32)))
            held += int(keep.sum())
        if max_per_prompt and held > 4 * max_per_prompt * len(q) + 100_000:
            kept = _ordered(*_concat(found), max_per_prompt)
            capped |= set(kept.capped)
            found, held = [(kept.prompt, kept.id, kept.score)], len(kept)
        progress.update(start + len(rows), held)
    result = _ordered(*_concat(found), max_per_prompt)
    capped |= set(result.capped)
    progress.done(len(result))
    return Matches(result.prompt, result.id, result.score, result.rank, tuple(sorted(capped)))


def exact_scores(q: np.ndarray, rows: np.ndarray, p: np.ndarray, j: np.ndarray,
                 chunk: int = 4096) -> np.ndarray:
    """Inner products of prompts `q[p]` with `rows[j]` (float32 inputs), accumulated in float64
    (each product of two float32 is exact in float64; the sum errs by ~1e-14), row by row:
    the same value whatever the block, the chunk or the machine's BLAS, so the decision
    ``>= threshold`` and the score (rounded once to float32) do not depend on them."""
    out = np.empty(len(p), dtype=np.float64)
    for lo in range(0, len(p), chunk):
        # einsum casts the float32 rows to float64 as it goes (3x faster than astype copies
        # first, and the same bits)
        out[lo:lo + chunk] = np.einsum("ij,ij->i", q[p[lo:lo + chunk]], rows[j[lo:lo + chunk]],
                                       dtype=np.float64)
    return out


def _concat(found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not found:
        return (np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float32))
    return tuple(np.concatenate(parts) for parts in zip(*found))  # type: ignore[return-value]


def _ordered(prompt: np.ndarray, ids: np.ndarray, score: np.ndarray,
             max_per_prompt: int) -> Matches:
    """Sorted by prompt, score descending, id ascending (deterministic ties); ranked within
    each prompt; cut to `max_per_prompt` per prompt when it is > 0."""
    order = np.lexsort((ids, -score, prompt))
    prompt, ids, score = prompt[order], ids[order], score[order]
    first = np.searchsorted(prompt, prompt, side="left")
    rank = (np.arange(len(prompt)) - first + 1).astype(np.int32)
    capped: tuple[int, ...] = ()
    if max_per_prompt:
        capped = tuple(int(p) for p in np.unique(prompt[rank > max_per_prompt]))
        keep = rank <= max_per_prompt
        prompt, ids, score, rank = prompt[keep], ids[keep], score[keep], rank[keep]
    return Matches(prompt, ids, score, rank, capped)


class _Progress:
    """Logs vectors scanned, rate, pairs (vectors × prompts) per second and ETA every few
    seconds."""

    def __init__(self, total: int, prompts: int) -> None:
        self.total, self.prompts = total, prompts
        self.start = self.last = time.monotonic()

    def update(self, done: int, matches: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        log.info("export: %d / %d vectors (%.0f%%), %.0f vectors/s, %.3g pairs/s, %d matches, "
                 "ETA %.0fs", done, self.total, 100 * done / max(self.total, 1), rate,
                 rate * self.prompts, matches, (self.total - done) / max(rate, 1e-9))

    def done(self, matches: int) -> None:
        seconds = time.monotonic() - self.start
        log.info("export: scanned %d vectors × %d prompts in %.1fs (%.3g pairs/s): %d matches",
                 self.total, self.prompts, seconds,
                 self.total * self.prompts / max(seconds, 1e-9), matches)
