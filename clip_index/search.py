"""ClipIndex: open a published index (a local or gs:// ``output_dir``, ``hf://ORG/NAME`` on the
Hugging Face Hub, or the reference's published layout) and search it by text, image or embedding.

The query model is exactly the one the manifest names (model, pretrained, dim), so query and
index embeddings come from the same weights; the reference layout has no manifest and its model
is known (see `clip_index.layout`).
"""

from __future__ import annotations

import io as _io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_index import io, schema
from clip_index.hub import download_index, is_hub_uri, parse_hub_uri
from clip_index.layout import detect_layout, read_mapping
from clip_index.models import ClipModel, load_model, normalise

log = logging.getLogger(__name__)

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
    (see `clip_index.layout`).

    mmap: memory-map the faiss index instead of reading it into RAM (for indexes larger than
    memory; slower per query). device: where the query model runs ('auto', 'cpu', 'cuda').
    pretrained: a local checkpoint of the model's weights, for machines that cannot download the
    pretrained tag the folder names (the model name is still the folder's).
    """

    def __init__(self, output_dir: str | Path, mmap: bool = False, device: str = "cpu",
                 pretrained: str | None = None) -> None:
        import faiss

        self.location = str(output_dir)
        if is_hub_uri(self.location):
            repo_id, revision = parse_hub_uri(self.location)
            self.output_dir = download_index(repo_id, revision)
        else:
            self.output_dir = self.location
        self.layout = detect_layout(self.output_dir)
        log.info("%s", self.layout.describe())
        path = io.local_path(self.layout.index_path)
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.index = faiss.read_index(path, flags)
        self.infos: dict[str, Any] = self.layout.infos
        if self.infos.get("index_param"):
            faiss.ParameterSpace().set_index_parameters(self.index, self.infos["index_param"])
        self.manifest: dict[str, Any] = {"dim": self.dim, **self.layout.manifest}
        if pretrained:
            self.manifest["pretrained"] = pretrained
        self.mapping = read_mapping(self.layout)
        if self.mapping.num_rows != self.index.ntotal:
            raise RuntimeError(f"id mapping has {self.mapping.num_rows} rows but the index has "
                               f"{self.index.ntotal} vectors: the folder is inconsistent")
        # stored vectors that keep their norm (the reference): rescore candidates by that norm
        self.rescore = not self.layout.normalised and _enable_reconstruct(self.index)
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

    def search_embedding(self, embeddings: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Top-k matches for each row of `embeddings` (shape (n, dim) or (dim,)); the rows are
        L2-normalised first, so scores are cosine similarities."""
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"embedding shape {q.shape}: expected (n, {self.dim})")
        if k < 1:
            raise ValueError(f"k={k}: expected an integer >= 1")
        q = normalise(q)
        if not self.rescore:
            scores, ids = self.index.search(q, min(k, len(self)))
            return [self._results(s, i) for s, i in zip(scores, ids)]
        # inner products with unnormalised stored vectors favour long vectors: take more
        # candidates, divide by each stored vector's norm (cosine), keep the best k
        scores, ids = self.index.search(q, min(max(k * RESCORE_FACTOR, 100), len(self)))
        out = []
        for row_scores, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            row_scores, row_ids = row_scores[keep], row_ids[keep]
            norms = np.linalg.norm(self.index.reconstruct_batch(row_ids), axis=1)
            cosine = row_scores / np.maximum(norms, 1e-12)
            best = np.argsort(-cosine, kind="stable")[:k]
            out.append(self._results(cosine[best], row_ids[best]))
        return out

    def search_text(self, text: str | list[str], k: int = 10) -> list[SearchResult] | list[
            list[SearchResult]]:
        """Top-k matches for a text (a list of results) or for each of a list of texts."""
        texts = [text] if isinstance(text, str) else list(text)
        results = self.search_embedding(self.model.encode_text(texts), k)
        return results[0] if isinstance(text, str) else results

    def search_image(self, image: Any, k: int = 10) -> list[SearchResult]:
        """Top-k matches for an image: a path, bytes, or a PIL image."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            img = Image.open(image)
        elif isinstance(image, (bytes, bytearray)):
            img = Image.open(_io.BytesIO(image))
        else:
            img = image
        pixels = self.model.preprocess(img.convert("RGB")).unsqueeze(0)
        return self.search_embedding(self.model.encode_images(pixels), k)[0]

    def _results(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
        out = []
        for score, i in zip(scores, ids):
            if i < 0:  # faiss pads with -1 when fewer than k vectors were found
                continue
            row = {name: self.mapping.column(name)[int(i)].as_py()
                   for name in (schema.UID, schema.URL, schema.CAPTION)}
            out.append(SearchResult(id=int(i), score=float(score), **row))
        return out


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
