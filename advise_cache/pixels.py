"""The image model's pixels: how a decoded frame becomes the model's input.

Every IFM here takes the evaluation geometry of open_clip and timm: the short side resized to
the input size S with an antialiased filter (bicubic for CLIP), a centre S x S crop, then the
model's mean and std. Two ways to resize, chosen by `extract --resize`:

- `tensor` (the default): decode processes hand over the frames as decoded (at most
  MAX_PIXELS, larger ones reduced by an integer box filter first, `cap_factor`), and
  `resize_crop_tensor` runs `F.interpolate(..., antialias=True)` where the model is: on the GPU
  in float, on the CPU on uint8 (torch's port of PIL's fixed-point kernels, ~7x PIL's speed);
- `pil`: decode processes resize each frame with PIL (`resize_crop`), byte for byte what
  open_clip's own transforms give (they resize a PIL image).

Decode processes import this module without torch: torch is imported by the tensor functions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

RESIZES = ("tensor", "pil")


@dataclass(frozen=True)
class PixelSpec:
    """How a model wants its pixels: square input size, interpolation, mean and std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


def crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left): the short side to `size`, a centre crop, with
    torchvision's roundings (the long side truncated, the offsets rounded), which open_clip's
    `Resize(size)` + `CenterCrop(size)` use."""
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    return nh, nw, int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))


def max_pixels(size: int) -> int:
    """Pixels a frame may have when handed over for the tensor resize: 720p, or 16 S^2 for a
    model with larger inputs. Larger frames are reduced first (`cap_factor`)."""
    return max(1280 * 720, 16 * size * size)


def cap_factor(h: int, w: int, size: int) -> int:
    """The smallest integer f such that an (h // f, w // f) frame has at most max_pixels(size)."""
    f = 1
    while (h // f) * (w // f) > max_pixels(size):
        f += 1
    return f


def reduce(frames: np.ndarray, factor: int) -> np.ndarray:
    """(T, H, W, 3) uint8 → (T, H // f, W // f, 3), each output pixel the mean of an f x f box
    (PIL's `reduce`): cheap, and close to what an antialiased resize would do at that scale."""
    if factor == 1:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).reduce(factor)) for f in frames])


def resize_crop(frames: np.ndarray, spec: PixelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """PIL: (T, H, W, 3) uint8 → short side resized to spec.size, centre crop, (T, S, S, 3) uint8
    (into `out` when given), as open_clip's and timm's transforms do on a PIL image."""
    from .errors import DecodeError

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DecodeError(f"expected RGB frames (T, H, W, 3), got shape {frames.shape}")
    _, h, w, _ = frames.shape
    s = spec.size
    nh, nw, top, left = crop_box(h, w, s)
    resample = _FILTERS.get(spec.interpolation, Image.BICUBIC)
    if out is None:
        out = np.empty((len(frames), s, s, 3), np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), resample)
        out[i] = np.asarray(img)[top : top + s, left : left + s]
    return out


_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def resize_crop_tensor(frames: torch.Tensor, spec: PixelSpec, gpu_kernels: bool | None = None) -> torch.Tensor:
    """(T, H, W, 3) uint8 on any device → (T, S, S, 3) uint8 on it: the geometry of `resize_crop`
    with `F.interpolate` (antialiased for bicubic and bilinear, which then use PIL's kernels).
    On the CPU it runs on uint8 in place of PIL; on a GPU in float32, in PIL's two passes (width,
    then height), each rounded and clamped to uint8 as PIL does: one float pass would keep the
    first pass's overshoot at sharp edges, up to 15 levels off PIL. Frames already S x S pass.
    `gpu_kernels`: run the GPU's float passes whatever the device (benchmarks measure them)."""
    _, h, w, _ = frames.shape
    s = spec.size
    nh, nw, top, left = crop_box(h, w, s)
    if (nh, nw) == (h, w):
        return frames[:, top : top + s, left : left + s]
    return resize_tensor(frames, nh, nw, spec.interpolation, gpu_kernels)[:, top : top + s, left : left + s]


def resize_tensor(
    frames: torch.Tensor, nh: int, nw: int, interpolation: str, gpu_kernels: bool | None = None
) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, nh, nw, 3) uint8 where the frames are, as `resize_crop_tensor`
    resizes (PIL's antialiased kernels; on a GPU in two rounded passes)."""
    import torch
    import torch.nn.functional as F

    _, h, w, _ = frames.shape
    if (nh, nw) == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2)  # a channels_last view: what the uint8 kernels want
    mode = interpolation if interpolation in _FILTERS else "bicubic"
    aa = mode != "nearest"
    if gpu_kernels is None:
        gpu_kernels = frames.device.type != "cpu"
    if not gpu_kernels and mode != "nearest":
        y = F.interpolate(x, size=(nh, nw), mode=mode, antialias=aa)
    else:
        y = x.float()
        for size in ((h, nw), (nh, nw)):
            y = F.interpolate(y, size=size, mode=mode, antialias=aa).round_().clamp_(0, 255)
        y = y.to(torch.uint8)
    return y.permute(0, 2, 3, 1)


def normalise(frames: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """(T, S, S, 3) uint8 → (T, 3, S, S) float32 scaled to [0, 1] and standardised."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = _stats(spec, x.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=16)
def _stats(spec: PixelSpec, device) -> tuple:
    """Mean and std as (1, 3, 1, 1) tensors on the device, made once: building them per batch
    is a blocking host-to-device copy, which would wait for every batch queued before it."""
    import torch

    mean = torch.tensor(spec.mean).view(1, 3, 1, 1).to(device)
    std = torch.tensor(spec.std).view(1, 3, 1, 1).to(device)
    return mean, std
