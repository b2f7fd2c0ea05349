"""clip-retrieval's query options that need LAION's heads (safety model, violence detector,
aesthetic score): which of them a request asked for, which this server can honour, and
applying the ones it can the way clip-retrieval's back end does.

Why most are not honoured: LAION's heads were made from OpenAI CLIP embeddings (ViT-B/32,
ViT-L/14); an index of another model (the default laion2b ViT-B-32) lives in a different
embedding space, where they would score noise. So for such an index every one of them is
reported as ignored (the IGNORED_HEADER response header; 400 with ``serve --strict-options``).

For an index built with an OpenAI CLIP model (open_clip's ``openai`` pretrained tag), two can be
loaded from a path or URL (both MIT-licensed LAION files) and are applied as clip-retrieval's
``clip_back.py`` applies them:
- aesthetic: ten mean embeddings of images rated 0..9 (LAION-AI/aesthetic-predictor,
  ``vit_b_32_embeddings/rating{0..9}.npy``); the query becomes
  normalise(query + rating[aesthetic_score] · aesthetic_weight).
- violence: prompt embeddings (LAION-AI/CLIP-based-NSFW-Detector,
  ``violence_detection_vit_b_32.npy``); a result whose normalised embedding has its largest
  inner product with prompt 1 is dropped (here the search asks for twice as many results first,
  so that num_images still come back where clip-retrieval would return fewer).
The safety model is an autokeras (TensorFlow) network: not served here, always reported ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_index import io
from clip_index.vectors import normalise

log = logging.getLogger(__name__)

IGNORED_HEADER = "X-Clip-Index-Ignored-Options"
OPENAI_PRETRAINED = "openai"  # open_clip's tag for OpenAI's CLIP weights
RATINGS = 10  # aesthetic ratings 0..9


@dataclass(frozen=True)
class LaionHeads:
    """LAION's heads for one index: `aesthetic` (10, dim) rating embeddings and `violence`
    (prompts, dim) prompt embeddings, either None when not loaded."""

    aesthetic: np.ndarray | None = None
    violence: np.ndarray | None = None
    source: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """The clip-retrieval options a request asked for: `ignored` (names, in request order)
    and `applied` ({"aesthetic": (score, weight)} and/or {"violence": True})."""

    ignored: list[str]
    applied: dict[str, Any]
    model: str = ""

    def refusal(self) -> str:
        return (f"{', '.join(self.ignored)}: this index cannot honour them (LAION's safety, "
                "violence and aesthetic heads were trained on OpenAI CLIP embeddings; this "
                f"index holds {self.model or 'other'} embeddings, and the safety model is not "
                "served here): send them off (false / empty), or ask a server without "
                "--strict-options, which answers without them and names them in the "
                f"{IGNORED_HEADER} header")


def _asked(value: Any) -> bool:
    return value not in (None, "", False, 0, "0")


def requested_options(body: dict[str, Any], heads: LaionHeads | None,
                      model: str = "") -> Options:
    """Which of use_safety_model, use_violence_detector and aesthetic_score (with a non-zero
    aesthetic_weight) `body` asks for, and which `heads` can honour. Raises ValueError on an
    aesthetic score or weight that is not a number (0..9) when it would be applied."""
    ignored: list[str] = []
    applied: dict[str, Any] = {}
    if _asked(body.get("use_safety_model")):
        ignored.append("use_safety_model")
    if _asked(body.get("use_violence_detector")):
        if heads is not None and heads.violence is not None:
            applied["violence"] = True
        else:
            ignored.append("use_violence_detector")
    score, weight = body.get("aesthetic_score"), body.get("aesthetic_weight")
    if _asked(score) or (score == 0 and _asked(weight)):
        if heads is None or heads.aesthetic is None:
            ignored += ["aesthetic_score"] + (["aesthetic_weight"] if _asked(weight) else [])
        elif _asked(weight):
            try:
                rating, w = int(float(score or 0)), float(weight or 0)
            except (TypeError, ValueError):
                raise ValueError(f"aesthetic_score={score!r}, aesthetic_weight={weight!r}: "
                                 "expected an integer 0..9 and a number") from None
            if not 0 <= rating < RATINGS or not np.isfinite(w):
                raise ValueError(f"aesthetic_score={score!r}: expected an integer 0..9")
            applied["aesthetic"] = (rating, w)
    return Options(ignored, applied, model)


def apply_heads(index: Any, heads: Any, options: Options, query: np.ndarray, k: int,
                deduplicate: bool | float, filters: Any) -> list[Any]:
    """Search `index` (a ClipIndex) for the (1, dim) `query` with the applied heads: the
    aesthetic shift of the query, then the violence check of the results."""
    q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))
    if "aesthetic" in options.applied and heads.aesthetic is not None:
        rating, weight = options.applied["aesthetic"]
        q = normalise(q + heads.aesthetic[rating][None, :] * weight)
    if "violence" not in options.applied or heads.violence is None:
        return list(index.search_embedding(q, k, deduplicate, filters)[0])
    results = index.search_embedding(q, min(2 * k, len(index)), deduplicate, filters)[0]
    if not results:
        return []
    vectors = normalise(index.embeddings_of(np.array([r.id for r in results])))
    violent = np.argmax(vectors @ heads.violence.T, axis=1) == 1
    return [r for r, bad in zip(results, violent) if not bad][:k]


def _load_npy(path: str) -> np.ndarray:
    fs, fs_path = io.filesystem(path)
    with fs.open(fs_path, "rb") as f:
        return np.load(f, allow_pickle=False)


def load_heads(index: Any, aesthetic: str | None, violence: str | None) -> LaionHeads:
    """LAION's heads for `index` (a ClipIndex) from local paths or URLs (any fsspec path):
    `aesthetic` a folder holding rating0.npy .. rating9.npy, `violence` one .npy of prompt
    embeddings. Refuses an index not built with an OpenAI CLIP model, and heads of another
    dim, naming what was found and what was expected."""
    model, pretrained = index.manifest.get("model"), index.manifest.get("pretrained")
    if pretrained != OPENAI_PRETRAINED:
        raise ValueError(f"LAION's heads need an index built with an OpenAI CLIP model "
                         f"(pretrained={OPENAI_PRETRAINED!r}); this one is {model} / "
                         f"{pretrained}, another embedding space: serve it without "
                         "--aesthetic-embeddings / --violence-prompts")
    ratings = None
    if aesthetic:
        rows = [_load_npy(io.join(aesthetic, f"rating{k}.npy")).astype(np.float32).reshape(-1)
                for k in range(RATINGS)]
        if any(len(r) != index.dim for r in rows):
            raise ValueError(f"aesthetic embeddings in {aesthetic!r} have "
                             f"{sorted({len(r) for r in rows})} values: expected {index.dim} "
                             f"(the index's dim; {model})")
        ratings = np.stack(rows)
    prompts = None
    if violence:
        prompts = _load_npy(violence).astype(np.float32)
        if prompts.ndim != 2 or prompts.shape[1] != index.dim or len(prompts) < 2:
            raise ValueError(f"violence prompts {violence!r} have shape {prompts.shape}: "
                             f"expected (2 or more prompts, {index.dim})")
    log.info("LAION heads for %s/%s: aesthetic %s, violence %s", model, pretrained,
             aesthetic or "-", violence or "-")
    return LaionHeads(ratings, prompts, {"aesthetic": aesthetic or "",
                                         "violence": violence or ""})
