"""ClipIndex: open a published index (a local or gs:// ``output_dir``, ``hf://ORG/NAME`` on the
Hugging Face Hub, or the reference's published layout) and search it by text, image (path,
bytes, PIL, URL) or embedding, one query or a batch, with optional de-duplication.

The query model is exactly the one the manifest names (model, pretrained, dim), so query and
index embeddings come from the same weights; the reference layout has no manifest and its model
is known (see `clip_index.index.layout`).
"""

from __future__ import annotations

import io as _io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_index import io, schema
from clip_index.config import DownloadConfig
from clip_index.embed.models import ClipModel, load_model
from clip_index.hub import download_index, is_hub_uri, parse_hub_uri
from clip_index.index.columns import ColumnStore
from clip_index.index.filtered import search_single
from clip_index.index.layout import IdMapping, detect_layout, read_mapping
from clip_index.index.rerank import RerankStore, TwoStageIndex
from clip_index.search.filters import FilterEngine, Filters, Selection
from clip_index.vectors import normalise

FilterSpec = Filters | dict[str, Any] | str | None

log = logging.getLogger(__name__)

MAX_QUERY_PIXELS = 100_000_000  # a query image larger than this is refused (decompression bombs)
DEDUP_THRESHOLD = 0.94  # cosine above which two results count as the same image (clip-retrieval)
# candidates per wanted result when rescoring unnormalised stored vectors (the reference)
RESCORE_FACTOR = 10


@dataclass(frozen=True)
class SearchResult:
    """One match: faiss `id`, the row's `uid`, `url`, `caption`, and the cosine `score`
    (`uid` and `caption` are None for the reference layout, which has neither)."""

    id: int
    uid: str | None
    url: str | None
    caption: str | None
    score: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClipIndex:
    """A published index folder, ready to query: a clip-index output folder (local, gs://, or
    ``hf://ORG/NAME[@REVISION]`` on the Hugging Face Hub) or the reference's published layout
    (see `clip_index.index.layout`).

    mmap: memory-map the faiss index instead of reading it into RAM (for indexes larger than
    memory; slower per query). device: where the query model runs ('auto', 'cpu', 'cuda').
    pretrained: a local checkpoint of the model's weights, for machines that cannot download the
    pretrained tag the folder names (the model name is still the folder's).
    threads: faiss threads (0 = faiss's default, all cores; 1 suits a server, where requests
    run side by side and a single query does not use more than one).
    """

    def __init__(self, output_dir: str | Path, mmap: bool = False, device: str = "cpu",
                 pretrained: str | None = None, threads: int = 0) -> None:
        import faiss

        if threads:
            faiss.omp_set_num_threads(threads)

        self.location = str(output_dir)
        if is_hub_uri(self.location):
            repo_id, revision = parse_hub_uri(self.location)
            self.output_dir = download_index(repo_id, revision)
        else:
            self.output_dir = self.location
        self.layout = detect_layout(self.output_dir)
        log.info("%s", self.layout.describe())
        path = io.local_path(self.layout.index_path)
        self.index = _read_index(path, mmap)
        self.infos: dict[str, Any] = self.layout.infos
        if self.infos.get("index_param"):
            faiss.ParameterSpace().set_index_parameters(self.index, self.infos["index_param"])
        # a two-stage index: the faiss index proposes candidates, the memory-mapped stored
        # vectors re-rank them exactly (clip_index.index.rerank)
        self.store: RerankStore | None = None
        self.searcher: Any = self.index
        if self.layout.rerank_path:
            self.store = RerankStore(io.local_path(self.layout.rerank_path),
                                     rows=int(self.index.ntotal), dim=int(self.index.d))
            self.searcher = TwoStageIndex(self.index, self.store,
                                          int(self.infos.get("rerank_depth", 200)))
        self.manifest: dict[str, Any] = {"dim": self.dim, **self.layout.manifest}
        if pretrained:
            self.manifest["pretrained"] = pretrained
        self.mapping = IdMapping(read_mapping(self.layout))
        if self.mapping.num_rows != self.index.ntotal:
            raise RuntimeError(f"id mapping has {self.mapping.num_rows} rows but the index has "
                               f"{self.index.ntotal} vectors: the folder is inconsistent")
        # stored vectors that keep their norm (the reference): rescore candidates by that norm
        self.rescore = not self.layout.normalised and _enable_reconstruct(self.index)
        # the metadata filters read (faiss/columns.json + column-*.npy; empty when absent)
        self.columns = ColumnStore(io.join(self.output_dir, schema.FAISS_DIR), len(self))
        self.filter_engine = FilterEngine(self.columns,
                                          lambda: self.mapping.table.column(schema.UID))
        self.device = device
        self._model: ClipModel | None = None

    @classmethod
    def from_hub(cls, repo_id: str, revision: str | None = None, mmap: bool = False,
                 device: str = "cpu", token: str | bool | None = None,
                 endpoint: str | None = None, cache_dir: str | None = None, full: bool = False,
                 pretrained: str | None = None) -> ClipIndex:
        """Open an index published on the Hugging Face Hub as a dataset (`clip-index publish`,
        or the reference's ``fondant-ai/datacomp-small-clip``), downloaded once into the HF
        cache. full: fetch data/ and failed/ too (not needed to query). token / endpoint: None =
        huggingface_hub's defaults (HF_TOKEN or the saved login; HF_ENDPOINT)."""
        path = download_index(repo_id, revision, token=token, endpoint=endpoint,
                              cache_dir=cache_dir, full=full)
        return cls(path, mmap=mmap, device=device, pretrained=pretrained)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def model(self) -> ClipModel:
        """The model named by the manifest, loaded on first use."""
        if self._model is None:
            m = self.manifest
            self._model = load_model(m["model"], m["pretrained"], self.device,
                                     int(m.get("seed", 0)))
            if self._model.dim != self.dim:
                raise RuntimeError(f"model {m['model']} gives dim {self._model.dim}, the index "
                                   f"holds dim {self.dim}")
        return self._model

    def selection(self, filters: FilterSpec) -> Selection | None:
        """The rows `filters` keep (a dict, JSON, ``name=value,...`` or Filters; see
        `clip_index.search.filters.Filters`), cached per distinct filter; None for none. Raises
        ValueError on an unknown filter, a bad value or a column this index lacks."""
        return self.filter_engine.selection(Filters.parse(filters))

    def search_embedding(self, embeddings: np.ndarray, k: int = 10,
                         deduplicate: bool | float = False,
                         filters: FilterSpec = None) -> list[list[SearchResult]]:
        """Top-k matches for each row of `embeddings` (shape (n, dim) or (dim,)); the rows are
        L2-normalised first, so scores are cosine similarities.

        deduplicate: drop results whose embedding has cosine >= threshold (True = 0.94, as
        clip-retrieval) with a better-ranked result of the same query; the search widens (up
        to max(20·k, 200) candidates) until k distinct results remain.
        filters: only rows that pass them (see `selection`), applied inside the first stage's
        scan: k results whenever k rows pass.
        """
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"embedding shape {q.shape}: expected (n, {self.dim})")
        if not np.isfinite(q).all():
            raise ValueError("embedding holds NaN or infinite values: expected finite floats")
        if k < 1:
            raise ValueError(f"k={k}: expected an integer >= 1")
        threshold = DEDUP_THRESHOLD if deduplicate is True else float(deduplicate or 0)
        selection = self.selection(filters)
        rows = len(self) if selection is None else selection.count
        q = normalise(q)
        if not threshold or not rows:
            scores, ids = self._search(q, max(1, min(k, rows)), selection)
            return [self._results(s, i) for s, i in zip(scores, ids)]
        # widen the search until k distinct results remain (or the cap / the index runs out)
        fetch, cap = min(max(3 * k, k + 10), rows), min(rows, max(20 * k, 200))
        while True:
            scores, ids = self._search(q, fetch, selection)
            keeps = [self._unique(row, threshold)[:k] for row in ids]
            if fetch >= cap or all(len(keep) >= k for keep in keeps):
                break
            fetch = min(fetch * 4, cap)
        return [self._results(s[keep], i[keep]) for s, i, keep in zip(scores, ids, keeps)]

    def search_text(self, text: str | list[str], k: int = 10,
                    deduplicate: bool | float = False, filters: FilterSpec = None) -> Any:
        """Top-k matches for a text (a list of results) or for each of a list of texts (a list
        of lists: one model call for the whole batch); filters: see `search_embedding`."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("text: expected a non-empty string (or a list of them)")
        self.selection(filters)  # bad filters fail before the model runs
        results = self.search_embedding(self.model.encode_text(texts), k, deduplicate, filters)
        return results[0] if isinstance(text, str) else results

    def search_image(self, image: Any, k: int = 10, deduplicate: bool | float = False,
                     filters: FilterSpec = None) -> Any:
        """Top-k matches for an image (a path, bytes or a PIL image: a list of results), or for
        each of a list of images (a list of lists, one model call); filters: see
        `search_embedding`."""
        images = image if isinstance(image, list) else [image]
        self.selection(filters)
        opened = [_open_image(img) for img in images]  # bad input fails before the model loads
        pixels = [self.model.preprocess(img) for img in opened]
        import torch

        results = self.search_embedding(self.model.encode_images(torch.stack(pixels)), k,
                                        deduplicate, filters)
        return results if isinstance(image, list) else results[0]

    def search_image_url(self, url: str, k: int = 10, deduplicate: bool | float = False,
                         fetch: DownloadConfig | None = None,
                         filters: FilterSpec = None) -> list[SearchResult]:
        """Top-k matches for the image at `url`, fetched like the download step fetches (the
        address guard, redirects checked hop by hop, the size cap; see DownloadConfig)."""
        from clip_index.fetch import fetch_url

        self.selection(filters)
        return self.search_image(fetch_url(url, fetch or DownloadConfig()), k, deduplicate,
                                 filters)

    def metadata(self, i: int) -> dict[str, Any]:
        """uid, url and caption of faiss id `i`."""
        return self.mapping.rows(np.array([int(i)]))[0]

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored (or, for compressed single-stage indexes, reconstructed) vectors of
        faiss ids; a two-stage index reads them from its re-rank store."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64)
        if self.store is not None:
            return self.store.take(ids)
        try:
            return np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32)
        except RuntimeError:  # IVF indexes reconstruct only with a direct map, made on demand
            ivf = faiss.extract_index_ivf(self.index)
            ivf.make_direct_map()
            return np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32)

    def _search(self, q: np.ndarray, n: int,
                selection: Selection | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss search of normalised queries (only the selection's rows, when given); for
        stored vectors that keep their norm (the reference layout), inner products favour long
        vectors, so take more candidates, divide by each stored vector's norm (cosine) and keep
        the best n (padded with id -1)."""
        if not self.rescore:
            if isinstance(self.searcher, TwoStageIndex):
                return self.searcher.search(q, n, selection)
            return search_single(self.index, q, n, selection)
        scores, ids = search_single(self.index, q, min(max(n * RESCORE_FACTOR, 100), len(self)),
                                    selection)
        out_scores = np.full((len(q), n), -np.inf, dtype=np.float32)
        out_ids = np.full((len(q), n), -1, dtype=np.int64)
        for row, (row_scores, row_ids) in enumerate(zip(scores, ids)):
            keep = row_ids >= 0
            row_scores, row_ids = row_scores[keep], row_ids[keep]
            norms = np.linalg.norm(self.embeddings_of(row_ids), axis=1)
            cosine = row_scores / np.maximum(norms, 1e-12)
            best = np.argsort(-cosine, kind="stable")[:n]
            out_scores[row, :len(best)], out_ids[row, :len(best)] = cosine[best], row_ids[best]
        return out_scores, out_ids

    def _unique(self, ids: np.ndarray, threshold: float) -> np.ndarray:
        """Positions in `ids` (best first) to keep: each result unless it is a near-copy
        (cosine >= threshold) of a kept better-ranked one. Greedy, O(k²) on k ≤ a few hundred."""
        valid = np.flatnonzero(ids >= 0)
        vectors = normalise(self.embeddings_of(ids[valid]))
        kept: list[int] = []
        for pos in range(len(valid)):
            if not kept or float(np.max(vectors[kept] @ vectors[pos])) < threshold:
                kept.append(pos)
        return valid[kept]

    def _results(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
        keep = ids >= 0  # faiss pads with -1 when fewer than k vectors were found
        found = ids[keep]
        rows = self.mapping.rows(found)
        return [SearchResult(id=i, score=score, **row)  # tolist: Python ints and floats
                for score, i, row in zip(scores[keep].tolist(), found.tolist(), rows)]


def encode_image_bytes(index: ClipIndex, body: bytes) -> np.ndarray:
    """The (1, dim) normalised embedding of an encoded image, by the index's model."""
    import torch

    pixels = index.model.preprocess(_open_image(body))
    return normalise(np.asarray(index.model.encode_images(torch.stack([pixels])),
                                dtype=np.float32))


def _open_image(image: Any) -> Any:
    """A PIL RGB image from a path, bytes or a PIL image; a clear error for anything else."""
    from PIL import Image, UnidentifiedImageError

    img: Image.Image
    try:
        if isinstance(image, (str, Path)):
            img = Image.open(image)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            img = Image.open(_io.BytesIO(bytes(image)))
        elif isinstance(image, Image.Image):
            img = image
        else:
            raise ValueError(f"image of type {type(image).__name__}: expected a path, bytes or "
                             "a PIL image")
        if img.width * img.height > MAX_QUERY_PIXELS:  # checked before decoding the pixels
            raise ValueError(f"image of {img.width}×{img.height} pixels: expected at most "
                             f"{MAX_QUERY_PIXELS} pixels")
        return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise ValueError(f"image could not be decoded ({exc}): expected a JPEG, PNG, WebP or "
                         "other image Pillow reads") from exc


def _read_index(path: str, mmap: bool) -> Any:
    """faiss.read_index, memory-mapped when asked; an index type faiss cannot map (fast-scan
    inverted lists) is read into RAM instead, with a note: a two-stage index's first stage is
    small, and its large part, the re-rank vectors, is always memory-mapped."""
    import faiss

    if not mmap:
        return faiss.read_index(path)
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        log.info("faiss cannot memory-map %s (%s): reading it into memory", path,
                 str(exc).splitlines()[0][:200])
        return faiss.read_index(path)


def _enable_reconstruct(index: Any) -> bool:
    """Make stored vectors readable by id (IVF indexes need a direct map); False when this
    index type cannot give them back (scores then stay raw inner products)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None  # not an IVF index: Flat and HNSW reconstruct as they are
    try:
        if ivf is not None:
            ivf.make_direct_map()
        if index.ntotal:
            index.reconstruct(0)
    except RuntimeError as exc:
        log.warning("this index cannot return its stored vectors (%s): scores are raw inner "
                    "products with unnormalised vectors, not cosines", exc)
        return False
    return True
