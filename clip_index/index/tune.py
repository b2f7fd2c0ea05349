"""Index quality: exact ground truth for held-out queries, recall@k, single-query latency, and
the search-time parameter (nprobe / efSearch) tuned to the cheapest value that reaches a target
recall.

autofaiss tunes that parameter to *spend* its query-time budget (``max_index_query_time_ms``,
10 ms by default), which on a CPU buys recall nobody asked for at five to thirty times the
latency; clip-index tunes it to *reach* ``target_recall`` measured against exact search, and
reports both the recall and the latency it got.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

HNSW_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


class VectorParts:
    """Vectors held as consecutive parts (arrays or memory-mapped ``.npy`` files), addressed by
    their position across the parts: position i is faiss id i."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    @classmethod
    def from_folder(cls, folder: str) -> VectorParts:
        """The ``*.npy`` files of `folder`, in name order (the order autofaiss reads them)."""
        files = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
        return cls([np.load(os.path.join(folder, f), mmap_mode="r") for f in files])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.parts[0].shape[1]) if self.parts else 0

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` as a contiguous float32 (len(ids), dim) array."""
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        rows = [self.parts[p][i - self.offsets[p]] for p, i in zip(part, ids)]
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 rows) part by part."""
        for part, start in zip(self.parts, self.offsets):
            yield int(start), np.asarray(part, dtype=np.float32)


class Vectors(Protocol):
    """Stored vectors addressed by faiss id: `VectorParts` or a two-stage index's re-rank store."""

    def __len__(self) -> int: ...

    def take(self, ids: np.ndarray) -> np.ndarray: ...

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]: ...


def exact_top_k(vectors: Vectors, queries: np.ndarray, k: int,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k ids by inner product, one part at a time (memory bounded by a part).

    exclude: one id per query that must not be returned (the query's own row, for leave-one-out
    queries drawn from the indexed vectors), or None.
    """
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start, part in vectors.iter_chunks():
        scores = queries @ part.T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        if exclude is not None:
            scores = np.where(ids == exclude[:, None], -np.inf, scores)
        if scores.shape[1] > k:  # keep each part's k best before merging (linear, not a sort)
            keep = np.argpartition(-scores, k, axis=1)[:, :k]
            scores, ids = (np.take_along_axis(a, keep, axis=1) for a in (scores, ids))
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return best_ids


def search_ids(index: Any, queries: np.ndarray, k: int,
               exclude: np.ndarray | None = None) -> np.ndarray:
    """The index's top-k ids, with each query's `exclude` id removed (searching k+1)."""
    if exclude is None:
        return np.asarray(index.search(queries, k)[1])
    _, ids = index.search(queries, k + 1)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (found, own) in enumerate(zip(ids, exclude)):
        kept = found[found != own][:k]
        out[row, :len(kept)] = kept
    return out


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    k = min(k, exact.shape[1])
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def latency_ms(index: Any, queries: np.ndarray, k: int = 10, n: int = 200) -> tuple[float, float]:
    """(p50, p99) milliseconds of single-query searches, one faiss thread (a single query does
    not use more, and idle OpenMP threads spinning beside it only add noise)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for row in queries[:n]:
            start = time.perf_counter()
            index.search(row[None, :], k)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def candidate_params(index: Any) -> list[str]:
    """Search-time settings to try, cheapest first: nprobe for IVF indexes (with the HNSW
    quantizer's efSearch alongside), efSearch for HNSW, nothing for exhaustive indexes."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        nprobes = [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                               768, 1024, 2048, 4096) if p <= ivf.nlist]
        hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        return [f"nprobe={p}" + (f",quantizer_efSearch={max(2 * p, 64)}" if hnsw_quantizer else "")
                for p in nprobes]
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        return [f"efSearch={ef}" for ef in HNSW_EF_SEARCH]
    return []


def tune(index: Any, queries: np.ndarray, exact: np.ndarray, target_recall: float, k: int = 10,
         exclude: np.ndarray | None = None,
         max_query_time_ms: float | None = None) -> tuple[str, float]:
    """Set and return the cheapest candidate parameter whose recall@k on `queries` reaches
    `target_recall`; ("", recall) for exact indexes.

    Candidates get slower as they go, so the search stops at the first one whose single-query
    p50 passes `max_query_time_ms` (autofaiss's budget); when no candidate within the budget
    reaches the target, the best one within it is kept, with a warning.
    """
    import faiss

    space = faiss.ParameterSpace()
    best = ("", -1.0)
    for param in candidate_params(index):
        space.set_index_parameters(index, param)
        if max_query_time_ms and best[0]:
            p50 = latency_ms(index, queries, k, n=50)[0]
            if p50 > max_query_time_ms:
                log.warning("tune: %s takes %.2f ms per query, over max_index_query_time_ms="
                            "%s: stopping at %s (recall@%d %.4f < target %.3f)", param, p50,
                            max_query_time_ms, best[0], k, best[1], target_recall)
                space.set_index_parameters(index, best[0])
                return best
        recall = recall_at(search_ids(index, queries, k, exclude), exact, k)
        log.debug("tune: %s → recall@%d %.4f", param, k, recall)
        if recall > best[1] + 1e-9:
            best = (param, recall)
        if recall >= target_recall:
            return param, recall
    if not best[0]:
        return "", recall_at(search_ids(index, queries, k, exclude), exact, k)
    log.warning("tune: no setting reached recall@%d %.3f; using %s (recall %.4f)", k,
                target_recall, best[0], best[1])
    space.set_index_parameters(index, best[0])
    return best


def held_out(vectors: Vectors, n_queries: int, k: int, queries: np.ndarray | None = None,
             exact: np.ndarray | None = None, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """(queries, exact top-k, excluded own ids or None, k): given held-out queries, or
    `n_queries` drawn from the indexed vectors leave-one-out (each query's own row is excluded
    from both the exact and the approximate results, so no query can find itself)."""
    exclude = None
    if queries is None:
        n_queries = min(n_queries, len(vectors))
        picks = np.random.default_rng(seed).choice(len(vectors), n_queries, replace=False)
        queries, exclude = vectors.take(picks), picks
    k = max(1, min(k, len(vectors) - (1 if exclude is not None else 0)))
    if exact is None:
        exact = exact_top_k(vectors, queries, k, exclude)
    return queries, exact, exclude, k


def halves(queries: np.ndarray, exact: np.ndarray, exclude: np.ndarray | None
           ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray | None], ...]:
    """(tune, eval) splits of (queries, exact, exclude): the first half tunes, the second
    measures (one query: both are that query)."""
    if len(queries) < 2:
        return (queries, exact, exclude), (queries, exact, exclude)
    half = len(queries) // 2
    return ((queries[:half], exact[:half], None if exclude is None else exclude[:half]),
            (queries[half:], exact[half:], None if exclude is None else exclude[half:]))


def tune_and_measure(index: Any, vectors: Vectors, n_queries: int, target_recall: float,
                     k: int = 10, queries: np.ndarray | None = None,
                     exact: np.ndarray | None = None, seed: int = 0,
                     max_query_time_ms: float | None = None) -> dict[str, Any]:
    """Tune `index` on half the held-out queries (see `held_out`) and measure it on the other
    half. `exact`: the queries' exact top-k when already known (benchmarks), else computed
    here. Returns recall@1, recall@k, the chosen parameter and single-query p50/p99 (ms)."""
    queries, exact, exclude, k = held_out(vectors, n_queries, k, queries, exact, seed)
    (tune_q, tune_e, tune_x), (eval_q, eval_e, eval_x) = halves(queries, exact, exclude)
    param, tuned_recall = tune(index, tune_q, tune_e, target_recall, k, tune_x,
                               max_query_time_ms)
    return {"index_param": param, **measure(index, eval_q, eval_e, eval_x, k, target_recall,
                                            tuned_recall, exclude is None)}


def measure(index: Any, queries: np.ndarray, exact: np.ndarray, exclude: np.ndarray | None,
            k: int, target_recall: float, tuned_recall: float, given: bool) -> dict[str, Any]:
    """recall@1, recall@k and single-query p50/p99 (ms) of `index` (anything with faiss's
    `search`) on held-out queries."""
    approx = search_ids(index, queries, k, exclude)
    p50, p99 = latency_ms(index, queries, k)
    return {
        "target_recall": target_recall,
        "recall_at_1": round(recall_at(approx, exact, 1), 4),
        f"recall_at_{k}": round(recall_at(approx, exact, k), 4),
        "recall_queries": int(len(queries)),
        "recall_queries_kind": "given held-out" if given else "leave-one-out",
        "tuning_recall": round(tuned_recall, 4),
        "latency_p50_ms": round(p50, 3),
        "latency_p99_ms": round(p99, 3),
    }


RERANK_DEPTHS = (20, 50, 100, 200, 400, 800)  # first-stage candidates to try re-ranking
TIMING_ROUNDS = 5


def _prefix_recalls(store: Any, queries: np.ndarray, candidates: np.ndarray,
                    exact: np.ndarray, k: int, depths: Sequence[int]) -> list[float]:
    """recall@k after re-ranking the first d candidates, for each d in `depths`, from one
    first-stage search of max(depths) (a search for d candidates returns the prefix of a
    search for more: the first stage ranks by its own fixed approximate distances)."""
    totals = np.zeros(len(depths))
    for q, cand, truth in zip(queries, candidates, exact):
        positions = np.flatnonzero(cand >= 0)
        scores = _exact_scores(store, cand[positions], q)
        # first-stage positions in exact order: a candidate's exact rank does not depend on the
        # depth, so the re-ranked top k at depth d are the first k of these with position < d
        order = positions[np.argsort(-scores, kind="stable")]
        wanted = set(truth[:k].tolist())
        for j, d in enumerate(depths):
            top = cand[order[order < d][:k]]
            totals[j] += len(wanted.intersection(top.tolist())) / k
    return list(totals / max(1, len(queries)))


def _exact_scores(store: Any, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Inner products of stored rows `ids` (any order) with `q`, through the store's blocked
    `scores` (which reads ascending ids)."""
    order = np.argsort(ids, kind="stable")
    out = np.empty(len(ids), dtype=np.float32)
    out[order] = store.scores(ids[order], q)
    return out


def tune_two_stage(first_stage: Any, store: Any, n_queries: int, target_recall: float,
                   k: int = 10, queries: np.ndarray | None = None,
                   exact: np.ndarray | None = None, seed: int = 0,
                   max_query_time_ms: float | None = None,
                   depths: Sequence[int] = RERANK_DEPTHS) -> dict[str, Any]:
    """Set the first stage's search parameter (nprobe) and choose the re-rank depth: for each
    depth the smallest nprobe whose re-ranked recall@k reaches `target_recall` on half the
    held-out queries, then among those pairs the one with the lowest single-query p50 (the
    cheapest); measured on the other half. nprobe grows until every depth has reached the
    target or a query takes more than `max_query_time_ms`; when no pair reaches the target the
    best recall within the budget is kept, with a warning."""
    import faiss

    from clip_index.index.rerank import TwoStageIndex

    queries, exact, exclude, k = held_out(store, n_queries, k, queries, exact, seed)
    (tune_q, tune_e, tune_x), (eval_q, eval_e, eval_x) = halves(queries, exact, exclude)
    depths = sorted({min(d, len(store)) for d in depths if d >= k} or {min(10 * k, len(store))})
    space = faiss.ParameterSpace()
    reached, best = _sweep_nprobe(first_stage, store, space, (tune_q, tune_e, tune_x), k,
                                  depths, target_recall, max_query_time_ms)
    options = [(param, d, r) for d, (param, r) in reached.items()]
    if not options:
        log.warning("tune: no (nprobe, re-rank depth) reached recall@%d %.3f; using %s with %d "
                    "candidates (recall %.4f)", k, target_recall, best[1], best[2], best[0])
        options = [(best[1], best[2], best[0])]
    param, depth, tuned_recall = _fastest(first_stage, store, space, options, tune_q, k)
    if param:
        space.set_index_parameters(first_stage, param)
    two_stage = TwoStageIndex(first_stage, store, depth)
    first_only = recall_at(search_ids(first_stage, eval_q, k, eval_x), eval_e, k)
    return {"index_param": param, "rerank_depth": int(depth),
            f"first_stage_recall_at_{k}": round(first_only, 4),
            **measure(two_stage, eval_q, eval_e, eval_x, k, target_recall, tuned_recall,
                      exclude is None)}


def _sweep_nprobe(first_stage: Any, store: Any, space: Any,
                  tune: tuple[np.ndarray, np.ndarray, np.ndarray | None], k: int,
                  depths: list[int], target_recall: float, max_query_time_ms: float | None
                  ) -> tuple[dict[int, tuple[str, float]], tuple[float, str, int]]:
    """Raise nprobe until every depth reaches `target_recall` or queries get too slow. Returns
    {depth: (the smallest param that reached the target there, its recall)} and the best
    (recall, param, depth) seen, for when no depth reached it."""
    from clip_index.index.rerank import TwoStageIndex

    tune_q, tune_e, tune_x = tune
    reached: dict[int, tuple[str, float]] = {}
    best = (-1.0, "", depths[-1])
    # p50 of the cheapest pair reached so far: a larger nprobe whose smallest unsettled depth
    # is already slower cannot beat it (the sweep used to run on to nlist for a depth, e.g.
    # 20, that never reaches the target: 40 of a 160 s build at 1M)
    reached_ms = math.inf
    for param in candidate_params(first_stage) or [""]:
        if param:
            space.set_index_parameters(first_stage, param)
        extra = 0 if tune_x is None else 1
        _, cand = first_stage.search(tune_q, min(depths[-1] + extra, len(store)))
        if tune_x is not None:
            cand = np.where(cand == tune_x[:, None], -1, cand)
        recalls = _prefix_recalls(store, tune_q, cand, tune_e, k, depths)
        log.debug("tune: %s → re-ranked recall@%d %s", param, k,
                  dict(zip(depths, np.round(recalls, 4))))
        newly = []
        for d, r in zip(depths, recalls):
            if d not in reached and r >= target_recall:
                reached[d] = (param, r)
                newly.append(d)
            if r > best[0] + 1e-9:
                best = (r, param, d)
        if len(reached) == len(depths):
            break
        if newly:  # at one nprobe the smallest depth is the cheapest
            reached_ms = min(reached_ms, latency_ms(TwoStageIndex(first_stage, store, newly[0]),
                                                    tune_q, k, n=30)[0])
        limit = min(max_query_time_ms or math.inf, reached_ms)
        if limit < math.inf:
            unsettled = min(d for d in depths if d not in reached)
            p50 = latency_ms(TwoStageIndex(first_stage, store, unsettled), tune_q, k, n=30)[0]
            if p50 > limit:
                log.info("tune: %s with %d candidates takes %.2f ms per query, over %s: "
                         "stopping", param, unsettled, p50,
                         f"a pair that reached the target ({reached_ms:.2f} ms)"
                         if reached_ms <= limit else
                         f"max_index_query_time_ms={max_query_time_ms}")
                break
    return reached, best


def _fastest(first_stage: Any, store: Any, space: Any, options: list[tuple[str, int, float]],
             queries: np.ndarray, k: int) -> tuple[str, int, float]:
    """The (param, depth, recall) option with the lowest median single-query p50. The options
    are timed interleaved, a few rounds: on a shared machine, load that comes and goes then
    slows every option alike instead of whichever was timed at the wrong moment."""
    from clip_index.index.rerank import TwoStageIndex

    samples: list[list[float]] = [[] for _ in options]
    for _ in range(TIMING_ROUNDS if len(options) > 1 else 1):
        for j, (param, d, _r) in enumerate(options):
            if param:
                space.set_index_parameters(first_stage, param)
            samples[j].append(latency_ms(TwoStageIndex(first_stage, store, d), queries, k,
                                         n=40)[0])
    timed = [(float(np.median(t)), d, param, r) for t, (param, d, r) in zip(samples, options)]
    _, depth, param, recall = min(timed)
    return param, depth, recall
