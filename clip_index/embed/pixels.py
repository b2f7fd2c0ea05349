"""Preprocess splitter: open_clip's image transform cut into a PIL stage (resize, crop, RGB →
uint8 tensor; runs in DataLoader workers) and a tensor stage (to float, /255, normalise; runs on
the whole batch on the model's device).

Why split: the float conversion and normalisation are a quarter of a worker's CPU time per
image, and uint8 batches are 4× smaller to pass between processes and to copy to a GPU. The
tensor stage repeats torchvision's `to_tensor` and `normalize` arithmetic element by element, so
the result is bit-identical to `preprocess(img)` (tests check it); a transform of any other shape
is not split and runs whole in the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_TO_TENSOR = ("ToTensor", "MaybeToTensor")


@dataclass(frozen=True)
class SplitPreprocess:
    """`pil_stage(img) -> uint8 (3, H, W)`; `tensor_stage(uint8 (N, 3, H, W)) -> float32`."""

    pil_transforms: tuple[Any, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pil_stage(self, img: Any) -> Any:
        import torch

        for transform in self.pil_transforms:
            img = transform(img)
        if getattr(img, "mode", None) != "RGB":
            img = img.convert("RGB")
        array = np.array(img, dtype=np.uint8, copy=True)  # as torchvision's to_tensor does
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def tensor_stage(self, pixels: Any, dtype: Any = None) -> Any:
        """uint8 (N, 3, H, W) on any device → the tensor `preprocess` would give: float32 and
        bit-identical by default; in `dtype` (bf16/fp16, the autocast dtype the first layer
        casts to anyway) as one fused multiply-add, without float32 intermediates."""
        import torch

        if dtype is not None and dtype != torch.float32:
            scale = torch.tensor([1 / (255 * s) for s in self.std], dtype=torch.float32)
            shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)],
                                 dtype=torch.float32)
            shape = (1, -1, 1, 1)
            return torch.addcmul(shift.to(pixels.device, dtype).view(shape),
                                 pixels.to(dtype), scale.to(pixels.device, dtype).view(shape))
        x = pixels.to(dtype=torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def split_preprocess(preprocess: Any) -> SplitPreprocess | None:
    """The split of a torchvision `Compose` ending in ToTensor + Normalize, else None."""
    transforms = getattr(preprocess, "transforms", None)
    if not transforms or len(transforms) < 2:
        return None
    to_tensor, normalize = transforms[-2], transforms[-1]
    if type(to_tensor).__name__ not in _TO_TENSOR or type(normalize).__name__ != "Normalize":
        return None
    mean, std = tuple(map(float, normalize.mean)), tuple(map(float, normalize.std))
    if len(mean) != 3 or len(std) != 3:
        return None
    return SplitPreprocess(tuple(transforms[:-2]), mean, std)
