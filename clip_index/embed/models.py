"""CLIP model loader: open_clip models by name with a pretrained tag, a local checkpoint, the
bundled tiny CLIP, or seeded random weights; built once per process and shared by embed and
search, so index-time and query-time embeddings come from the same weights."""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from clip_index.embed.pixels import SplitPreprocess, split_preprocess
from clip_index.vectors import normalise

log = logging.getLogger(__name__)

BUNDLED = "bundled"
NO_WEIGHTS = "none"


@dataclass
class ClipModel:
    """A loaded open_clip model with its image preprocess, tokenizer and embedding size, on one
    device (one process per GPU: several GPUs are used by several processes, see embed.step)."""

    name: str
    pretrained: str
    model: Any
    preprocess: Any
    tokenizer: Any
    dim: int
    device: str
    seed: int = 0
    _split: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """What the embed manifest records about the model (and a query must match); the seed
        rebuilds random weights (pretrained 'none')."""
        return {"model": self.name, "pretrained": self.pretrained, "dim": self.dim,
                "seed": self.seed}

    @property
    def split(self) -> SplitPreprocess | None:
        """`preprocess` cut into a PIL stage (workers) and a tensor stage (device), or None."""
        if self._split is None:
            self._split = split_preprocess(self.preprocess) or False
        return self._split or None

    def encode_text(self, texts: list[str], precision: str = "auto") -> np.ndarray:
        """L2-normalised text embeddings, float32, shape (len(texts), dim)."""
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode(), autocast(self.device, precision):
            features = self.model.encode_text(tokens).float()
        return normalise(features.cpu().numpy())

    def encode_images(self, pixels: Any, precision: str = "auto") -> np.ndarray:
        """L2-normalised image embeddings, float32 numpy, shape (N, dim); see `encode_tensor`."""
        return self.encode_tensor(pixels, precision).cpu().numpy()

    def encode_tensor(self, pixels: Any, precision: str = "auto") -> Any:
        """L2-normalised image embeddings as a float32 tensor (N, dim) left on the device (no
        synchronisation: the caller copies it when it needs it), of a (N, 3, H, W) tensor:
        float32 = `preprocess` output, or uint8 = the PIL stage of `split` (finished here, on
        the device, in the autocast dtype). precision: 'auto' (bf16 autocast on CUDA, fp32 on
        CPU), 'fp32', 'bf16', 'fp16'."""
        import torch

        with torch.inference_mode():
            pixels = pixels.to(self.device, non_blocking=True)
            if pixels.dtype == torch.uint8:
                if self.split is None:
                    raise ValueError(f"uint8 pixels need a splittable preprocess; {self.name}'s "
                                     "is not: pass preprocess() output")
                pixels = self.split.tensor_stage(pixels, _dtype(self.device, precision))
            with autocast(self.device, precision):
                features = self._image_tower()(pixels)
            features = features.float()
            return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _image_tower(self) -> Any:
        """open_clip's `encode_image` (unnormalised): the image tower alone for the CLIP classes;
        other classes (e.g. CoCa, whose tower returns more) run `encode_image`."""
        if type(self.model).__name__ not in ("CLIP", "CustomTextCLIP"):
            return self.model.encode_image
        return self.model.visual


def _dtype(device: str, precision: str) -> Any:
    """The dtype the first layer computes in: the autocast dtype, else float32."""
    import torch

    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def autocast(device: str, precision: str) -> Any:
    """An autocast context: bf16 on CUDA for 'auto' (fp16 when asked), none on CPU for 'auto'."""
    import contextlib

    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtypes[precision])


def register_bundled_configs() -> None:
    """Make the model configs shipped with clip-index (e.g. `tiny-clip`) known to open_clip."""
    from clip_index.embed.assets import register_model_configs

    register_model_configs()


def check_model_name(name: str) -> None:
    """Raise with the closest known names when open_clip has no config called `name`."""
    import open_clip

    register_bundled_configs()
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        raise ValueError(f"model={name!r} is not an open_clip model: closest known names {close} "
                         "(see open_clip.list_models())")


def check_pretrained(name: str, pretrained: str) -> None:
    """Raise when `pretrained` is neither a known tag for `name`, a file, 'bundled' nor 'none'."""
    import open_clip

    if pretrained in (NO_WEIGHTS, BUNDLED) or name.startswith(("hf-hub:", "local-dir:")):
        return
    if os.path.exists(pretrained) or "://" in pretrained:
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ValueError(
            f"pretrained={pretrained!r} is not a file nor a pretrained tag of model {name!r}: "
            f"expected one of {tags or '(no published weights)'}, a local checkpoint path, "
            f"'{BUNDLED}' (model tiny-clip) or '{NO_WEIGHTS}' (random weights)"
        )


def load_model(name: str, pretrained: str, device: str = "auto", seed: int = 0) -> ClipModel:
    """Load (once per process) an open_clip model; see EmbedConfig for the `pretrained` forms."""
    from clip_index.embed.device import resolve_device

    return _load(name, pretrained, resolve_device(device), seed)


@lru_cache(maxsize=4)
def _load(name: str, pretrained: str, device: str, seed: int) -> ClipModel:
    import open_clip
    import torch

    check_model_name(name)
    check_pretrained(name, pretrained)
    weights: str | None = pretrained
    if pretrained == NO_WEIGHTS:
        weights = None
        torch.manual_seed(seed)  # random weights are reproducible, so queries can rebuild them
        log.warning("model %s with random weights (seed %d): the index will be meaningless",
                    name, seed)
    elif pretrained == BUNDLED:
        from clip_index.embed.assets import TINY_CLIP_WEIGHTS

        weights = str(TINY_CLIP_WEIGHTS)
    extra: dict[str, Any] = {}
    staged = staged_weights(name, pretrained)
    if staged is not None:  # in the local cache (baked into the GPU image): no hub request
        weights, extra = staged
        log.info("pretrained %s for %s from the local cache: %s", pretrained, name, weights)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=device, **extra
        )
    except Exception as exc:
        if weights and not os.path.exists(weights):
            raise RuntimeError(
                f"could not fetch pretrained weights {pretrained!r} for model {name!r} ({exc}). "
                "Without network access, download the checkpoint elsewhere and pass its local "
                "path: --pretrained /path/to/open_clip_model.safetensors"
            ) from exc
        raise
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    dim = int(model.text_projection.shape[1]) if _has_text_projection(model) else _probe_dim(model)
    log.info("loaded %s (%s) on %s, dim %d", name, pretrained, device, dim)
    return ClipModel(name, pretrained, model, preprocess, tokenizer, dim, device, seed)


# pretrained-config keys that a checkpoint loaded by path reproduces through the arguments below
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std",
                    "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}


def staged_weights(name: str, pretrained: str, cache_dir: str | None = None
                   ) -> tuple[str, dict[str, Any]] | None:
    """(local file, preprocess arguments) for an open_clip pretrained tag whose weights are
    already in the Hugging Face cache (``HF_HUB_CACHE``; the GPU image bakes the default in),
    so that every task loads them without asking the hub (anonymous requests are rate-limited);
    None when not cached, or when the tag needs more than the file and its preprocess (it then
    goes through open_clip's own hub download, which uses the cache too)."""
    import open_clip

    if pretrained in (NO_WEIGHTS, BUNDLED) or os.path.exists(pretrained):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    hub = (cfg or {}).get("hf_hub", "")
    if not hub or set(cfg) - {"url", "hf_hub", *_PREPROCESS_KEYS}:
        return None
    repo, filename = os.path.split(hub)  # 'org/name/' means open_clip's default file name
    filename = filename or "open_clip_pytorch_model.bin"
    stem = os.path.splitext(filename)[0]
    candidates = [f"{stem.replace('pytorch_model', 'model')}.safetensors",
                  f"{stem}.safetensors", filename]  # open_clip prefers safetensors too
    for candidate in dict.fromkeys(candidates):
        path = try_to_load_from_cache(repo, candidate, cache_dir=cache_dir)
        if isinstance(path, str):
            return path, {arg: cfg[key] for key, arg in _PREPROCESS_KEYS.items() if key in cfg}
    return None


def stage_weights(name: str, pretrained: str) -> str:
    """Download `name`'s `pretrained` weights into the Hugging Face cache (the GPU image's build
    runs this for the default model); returns the file."""
    import open_clip

    return str(open_clip.download_pretrained(open_clip.get_pretrained_cfg(name, pretrained)))


def _has_text_projection(model: Any) -> bool:
    proj = getattr(model, "text_projection", None)
    return proj is not None and hasattr(proj, "shape") and len(proj.shape) == 2


def _probe_dim(model: Any) -> int:
    import torch

    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    with torch.inference_mode():
        out = model.encode_image(torch.zeros(1, 3, *size, device=next(model.parameters()).device))
    return int(out.shape[-1])
