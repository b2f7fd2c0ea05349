"""ClipIndex: open a published ``output_dir`` and search it by text, image or embedding.

The query model is exactly the one the manifest names (model, pretrained, dim), so query and
index embeddings come from the same weights.
"""

from __future__ import annotations

import io as _io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clip_index import io, schema
from clip_index.models import ClipModel, load_model, normalise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """One match: faiss `id`, the row's `uid`, `url`, `caption`, and the cosine `score`."""

    id: int
    uid: str
    url: str | None
    caption: str | None
    score: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClipIndex:
    """A published clip-index folder (local or gs://), ready to query.

    mmap: memory-map the faiss index instead of reading it into RAM (for indexes larger than
    memory; slower per query). device: where the query model runs ('auto', 'cpu', 'cuda').
    """

    def __init__(self, output_dir: str | Path, mmap: bool = False, device: str = "cpu") -> None:
        import faiss

        self.output_dir = str(output_dir)
        for required in (schema.MANIFEST, schema.INDEX_INFOS):
            if not io.exists(io.join(self.output_dir, required)):
                raise FileNotFoundError(
                    f"{self.output_dir!r} is not a clip-index output folder: no {required} "
                    "(expected data/, faiss/knn.index, id_mapping/, manifest.json, "
                    "index_infos.json, as written by `clip-index run`)")
        self.manifest: dict[str, Any] = io.read_json(io.join(self.output_dir, schema.MANIFEST))
        self.infos: dict[str, Any] = io.read_json(io.join(self.output_dir, schema.INDEX_INFOS))
        path = io.local_path(io.join(self.output_dir, schema.FAISS_DIR, schema.INDEX_FILE))
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.index = faiss.read_index(path, flags)
        if self.infos.get("index_param"):
            faiss.ParameterSpace().set_index_parameters(self.index, self.infos["index_param"])
        self.mapping = _read_mapping(self.output_dir)
        if self.mapping.num_rows != self.index.ntotal:
            raise RuntimeError(f"id mapping has {self.mapping.num_rows} rows but the index has "
                               f"{self.index.ntotal} vectors: the folder is inconsistent")
        self.device = device
        self._model: ClipModel | None = None

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
        scores, ids = self.index.search(normalise(q), min(k, len(self)))
        return [self._results(s, i) for s, i in zip(scores, ids)]

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


def _read_mapping(output_dir: str) -> pa.Table:
    parts = io.list_shards(io.join(output_dir, schema.ID_MAPPING_DIR))
    tables = [io.read_parquet(p) for p in parts]
    if not tables:
        return schema.ID_MAPPING_SCHEMA.empty_table()
    table = pa.concat_tables(tables).combine_chunks()
    ids = table.column(schema.FAISS_ID).to_numpy()
    if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
        raise RuntimeError(f"id mapping in {output_dir} is not in faiss id order 0..{len(ids) - 1}")
    return table
