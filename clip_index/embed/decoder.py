"""Device decoder: JPEG bytes → the uint8 (N, 3, S, S) batch open_clip's PIL stage would give,
decoded and resized on the model's device (nvJPEG through torchvision's `decode_jpeg` on CUDA,
libjpeg-turbo on the CPU).

Why: the download step stores JPEGs (256 px shorter side by default), and decoding plus PIL's
bicubic resize costs ~1.5 ms of CPU per image, which caps an 8-vCPU task at ~2,500 img/s. Here
the CPU only hands over bytes. The resize is torchvision's tensor resize with antialias (built
to follow PIL's filter) at the size PIL's path computes, then the same center crop: results
match open_clip's own preprocessing within a few uint8 levels (tests/unit/test_embed_pipeline.py
bounds it, and the embeddings' cosine to open_clip's). Images that are not JPEG, or that the
batch decoder refuses, come back as None for the caller to decode on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


@dataclass(frozen=True)
class DeviceResize:
    """open_clip's eval geometry on tensors: shorter side to `size` (bicubic, antialiased) then a
    center crop of `crop` (height, width)."""

    size: int
    crop: tuple[int, int]

    @classmethod
    def from_preprocess(cls, pil_transforms: tuple[Any, ...]) -> DeviceResize | None:
        """The geometry of a PIL stage that is exactly Resize(int, bicubic) + CenterCrop (+ mode
        conversion), else None (such a model keeps the CPU path)."""
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize

        names = [type(t).__name__ for t in pil_transforms]
        core = [t for t, n in zip(pil_transforms, names)
                if n not in ("MaybeConvertMode", "function")]
        if len(core) != 2 or not isinstance(core[0], Resize) or not isinstance(core[1],
                                                                                 CenterCrop):
            return None
        resize, crop = core
        size = resize.size if isinstance(resize.size, int) else (
            resize.size[0] if len(resize.size) == 1 else None)
        if (size is None or resize.max_size is not None
                or resize.interpolation != InterpolationMode.BICUBIC):
            return None
        return cls(int(size), (int(crop.size[0]), int(crop.size[1])))

    def __call__(self, image: Any) -> Any:
        """uint8 (3, H, W) on any device → uint8 (3, crop_h, crop_w) on the same device."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        resized = F.resize(image, [self.size], interpolation=InterpolationMode.BICUBIC,
                           antialias=True)
        return F.center_crop(resized, list(self.crop))


def decode_jpegs(datas: list[Any], device: str) -> list[Any]:
    """Decode JPEGs (1-D uint8 tensors) to uint8 RGB (3, H, W) on `device`, as one batch call;
    when the batch call fails, one by one, so that only the bad images come back as None."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        wait_for_current_stream()
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as exc:
        log.warning("batch JPEG decode failed (%s); decoding its %d images one by one", exc,
                    len(datas))
    out: list[Any] = []
    for data in datas:
        if on_cuda:  # every decode after the stream's queued work, not only the batch's
            wait_for_current_stream()
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out


def wait_for_current_stream() -> None:
    """Block until the current CUDA stream has run everything queued on it.

    torchvision's CUDA `decode_jpeg` (decode_jpegs_cuda.cpp, torchvision <= 0.29) allocates its
    outputs on the caller's current stream but has nvJPEG write them on a private stream that
    is never ordered after the caller's: the caching allocator may hand it a block that kernels
    still queued on the caller's stream read (a batch resized or stacked a moment ago), and the
    decode overwrites it, with no error: pytorch/vision#9606 (199/200 corrupted on an H100);
    nvJPEG's hardware decoder ignores stream order the same way (meta-pytorch/torchcodec#1634).
    Waiting on the host here, on the prefetch thread's side stream, costs the forward pass
    nothing. Remove once the image's torchvision orders the decode after the caller's stream.
    """
    import torch

    torch.cuda.current_stream().synchronize()
