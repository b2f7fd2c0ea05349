"""Filtered search over a faiss index: the search parameters that carry an IDSelector into
the first stage, the check after the re-rank, and the exact search of small selections.

A `selection` here is any object with `selector` (a faiss IDSelector), `count`, `contains(ids)`
and `ids()` (`clip_index.search.filters.Selection`); faiss's IVF fast-scan and IVF scans honour
the selector given in ``SearchParametersIVF.sel`` (checked with faiss 1.13.2; IndexRefine's
own ``sel`` is not applied, so the selector goes into the base index's parameters).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# rows: a selection this small is scored exactly, all of it. Measured at 1M (BENCHMARKS.md):
# 10,000 selected rows took 6.5 ms exactly against 3.2 ms through the first stage (recall@10
# 0.977), so the exact scan (a bitmap check per stored row) is kept for small selections,
# where the scan would otherwise probe nearly every list
EXACT_SELECTION = 2_000


FILTER_NPROBE_POWER = 0.5  # a filter keeping a share p of rows probes nprobe·p^-0.5 lists


def filtered_nprobe(nprobe: int, nlist: int, share: float) -> int:
    """Lists to probe when only `share` of the rows may be returned: the filtered top-k lie
    deeper in the unfiltered ranking (about k/share), so the tuned nprobe is scaled up by
    share^-FILTER_NPROBE_POWER (measured at 1M: bench/index/filtered.py), up to nlist."""
    if share >= 1 or share <= 0:
        return nprobe
    return int(min(nlist, max(nprobe, round(nprobe * share ** -FILTER_NPROBE_POWER))))


def first_stage_params(index: Any, ivf: Any, nprobe: int | None, selection: Any) -> Any:
    """faiss search parameters for the first stage: `nprobe` lists (None: the index's own)
    and the selection's IDSelector; None when neither is asked. IVF indexes (behind a
    pre-transform too) need SearchParametersIVF, which carries nprobe: it is set from the
    index when not given, since the parameters' default (1) would replace it."""
    import faiss

    if nprobe is None and selection is None:
        return None
    sel = None if selection is None else selection.selector
    if ivf is None:
        return faiss.SearchParameters(sel=sel)
    params = faiss.SearchParametersIVF(nprobe=int(nprobe or ivf.nprobe),
                                       max_codes=int(ivf.max_codes))
    if sel is not None:
        params.sel = sel
    return params


def keep_selected(scores: np.ndarray, ids: np.ndarray,
                  selection: Any) -> tuple[np.ndarray, np.ndarray]:
    """Drop results outside the selection, the rest moved up in order, padded -inf / -1."""
    ok = selection.contains(ids)
    if ok[ids >= 0].all():
        return scores, ids
    out_scores = np.full_like(scores, -np.inf)
    out_ids = np.full_like(ids, -1)
    for row in range(len(ids)):
        keep = np.flatnonzero(ok[row])
        out_scores[row, :len(keep)], out_ids[row, :len(keep)] = scores[row, keep], ids[row, keep]
    return out_scores, out_ids


def exact_search(store: Any, queries: np.ndarray, k: int,
                 selection: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among the selection's rows of the re-rank store: for
    selections too small for an inverted-file scan to find (a uid subset, a rare
    combination). Only the selected rows are read (`RerankStore.scores`, in blocks), so the
    cost follows the selection, not the index: at 1M rows, 1,000 selected took 0.7 ms a query
    where faiss's scan of the stored vectors with the selector (a bitmap check per stored row)
    took 3.5 ms."""
    n = len(queries)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    out = np.full((n, k), -1, dtype=np.int64)
    ids = selection.ids()
    if not len(ids):
        return scores, out
    for r in range(n):
        sims = store.scores(ids, np.ascontiguousarray(queries[r], dtype=np.float32))
        best = np.argsort(-sims, kind="stable")[:k]
        scores[r, :len(best)], out[r, :len(best)] = sims[best], ids[best]
    return scores, out


def search_single(index: Any, queries: np.ndarray, k: int,
                  selection: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """faiss search of a one-stage index with the selection's IDSelector (IVF: with more lists
    for queries whose probed lists held fewer than k selected rows), checked after."""
    import faiss

    if selection is None:
        return index.search(queries, k)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    scores, ids = index.search(queries, k, params=first_stage_params(index, ivf, None,
                                                                     selection))
    scores, ids = keep_selected(scores, ids, selection)
    need = min(k, selection.count)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < need) if need else np.empty(0, np.int64)
    nprobe = int(ivf.nprobe) if ivf is not None else 0
    while len(short) and ivf is not None and nprobe < ivf.nlist:
        nprobe = min(4 * nprobe, int(ivf.nlist))
        more_scores, more = index.search(queries[short], k, params=first_stage_params(
            index, ivf, nprobe, selection))
        more_scores, more = keep_selected(more_scores, more, selection)
        scores[short], ids[short] = more_scores, more
        short = short[(more >= 0).sum(axis=1) < need]
    return scores, ids
