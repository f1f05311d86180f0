"""Stored views of a frame: which pixels besides the centre crop an image model sees, and how.

`extract --aug-views N --crops 3` stores, for every frame, the centre crop (view 0, as a store
without views holds), then N augmented views, then the three evaluation crops. A view is data in
the image model's attributes (`views`: one dict per view, docs/STORE.md), made by `view_specs`:

- `centre`: the short side to S, a centre S x S crop (pixels.resize_crop_tensor);
- `simple`: the released code's `AUG.TYPE simple` (datasets/augmentation.py): the frame resized
  to 320 x 256 (bilinear, aspect ignored), a random 224 crop, then with p 0.8 colour jitter
  (brightness, contrast, saturation factors in [0.8, 1.2], a hue draw in [-0.1, 0.1], the four
  in a random order). One draw per video and view (`draw`, from the view's seed, the video's
  index and the view's), applied to every frame of the video, as the code applies one draw to
  every frame of a clip;
- `crop`: the evaluation crops of the code's inference geometry: the short side to 256, an S x S
  crop at the start, centre or end of the long side (left/centre/right or top/centre/bottom).

Sizes are the code's for a 224 input; a model of input S scales every pixel size by S / 224
(rounded), so test-vit (S = 64) resizes to 91 x 73 and crops 64. The sizes used are recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .configs import check_views_train
from .errors import AdviseCacheError

if TYPE_CHECKING:
    import torch

    from .pixels import PixelSpec

REFERENCE_SIZE = 224  # the code's crop; other input sizes scale every pixel size by S / 224
SIMPLE_RESIZE = (320, 256)  # width, height (AUG.RESIZE)
SIMPLE_COLOUR = (0.8, 0.2, 0.2, 0.2, 0.1)  # p, brightness, contrast, saturation, hue (AdViSe.yaml AUG.COLOR)
EVAL_SHORT_SIDE = 256  # INFER.RES
CROP_POSITIONS = ("start", "centre", "end")  # along the long side: left/top, centre, right/bottom
CROPS = (0, 1, 3)  # what `extract --crops` takes: none, the centre one, or all three


def scaled(pixels: int, size: int) -> int:
    """A pixel size of the code's 224 geometry for a model of input `size`."""
    return int(round(pixels * size / REFERENCE_SIZE))


def view_specs(aug_views: int, crops: int, seed: int, size: int) -> list[dict]:
    """The views a group stores, as its `views` attribute: the centre crop, `aug_views` draws of
    `simple`, then `crops` evaluation crops (1: the centre one, 3: all three)."""
    if aug_views < 0:
        raise AdviseCacheError(f"--aug-views must be >= 0, got {aug_views}")
    if crops not in CROPS:
        raise AdviseCacheError(f"--crops must be one of {', '.join(map(str, CROPS))}, got {crops}")
    p, b, c, s, h = SIMPLE_COLOUR
    views = [{"kind": "centre", "short_side": size, "crop": size}]
    for i in range(aug_views):
        views.append(
            {
                "kind": "simple",
                "draw": i,
                "seed": seed,
                "resize": [scaled(SIMPLE_RESIZE[0], size), scaled(SIMPLE_RESIZE[1], size)],
                "crop": size,
                "jitter_p": p,
                "brightness": b,
                "contrast": c,
                "saturation": s,
                "hue": h,
            }
        )
    positions = [] if not crops else ["centre"] if crops == 1 else list(CROP_POSITIONS)
    for where in positions:
        views.append({"kind": "crop", "position": where, "short_side": scaled(EVAL_SHORT_SIDE, size), "crop": size})
    return views


def draw(view: dict, video: int) -> dict:
    """The one draw of a `simple` view for a video: crop corner (in the resized frame), whether
    the jitter applies, its factors and order. Deterministic in (seed, video, draw)."""
    rng = np.random.default_rng([int(view["seed"]), int(video), int(view["draw"])])
    w, h = view["resize"]
    k = view["crop"]
    top, left = int(rng.integers(0, h - k + 1)), int(rng.integers(0, w - k + 1))
    b, c, s, hue = view["brightness"], view["contrast"], view["saturation"], view["hue"]
    return {
        "top": top,
        "left": left,
        "brightness": float(rng.uniform(max(0.0, 1 - b), 1 + b)),
        "contrast": float(rng.uniform(max(0.0, 1 - c), 1 + c)),
        "saturation": float(rng.uniform(max(0.0, 1 - s), 1 + s)),
        "hue": float(rng.uniform(-hue, hue)),
        "order": rng.permutation(4).tolist(),
        "jitter": bool(rng.random() < view["jitter_p"]),
    }


def view_pixels(frames: torch.Tensor, view: dict, video: int, spec: PixelSpec) -> torch.Tensor:
    """(T, H, W, 3) uint8 as decoded → (T, S, S, 3) uint8 of one view, where the frames are."""
    from .pixels import resize_crop_tensor, resize_tensor

    kind = view["kind"]
    if kind == "centre":
        return resize_crop_tensor(frames, spec)
    s = spec.size
    if kind == "crop":
        return _eval_crop(frames, view, spec)
    if kind != "simple":
        raise AdviseCacheError(f"a stored view of kind {kind!r} is not known to this advise-cache: upgrade it")
    d = draw(view, video)
    w, h = view["resize"]
    x = resize_tensor(frames, h, w, "bilinear")
    x = x[:, d["top"] : d["top"] + s, d["left"] : d["left"] + s]
    return colour_jitter(x, d) if d["jitter"] else x


def _eval_crop(frames: torch.Tensor, view: dict, spec: PixelSpec) -> torch.Tensor:
    from .pixels import crop_box, resize_tensor

    _, h, w, _ = frames.shape
    s = spec.size
    nh, nw, _, _ = crop_box(h, w, view["short_side"])
    x = resize_tensor(frames, nh, nw, spec.interpolation)
    top, left = (nh - s) // 2, (nw - s) // 2  # centred on both sides, then moved along the long one
    at = CROP_POSITIONS.index(view["position"])
    if nh > nw:
        top = (0, top, nh - s)[at]
    else:
        left = (0, left, nw - s)[at]
    return x[:, top : top + s, left : left + s]


def colour_jitter(frames: torch.Tensor, d: dict) -> torch.Tensor:
    """The code's RandomColorJitter on (T, S, S, 3) uint8 with one draw `d`: brightness, contrast
    and saturation blend with black, the mean grey and each pixel's grey (PIL's ImageEnhance,
    through torchvision's tensor kernels). The hue: the code adds its draw in [-0.1, 0.1] to PIL's
    uint8 hue channel and truncates, which leaves the hue alone for a draw >= 0 and lowers it by
    one step of 256 for a draw < 0; that step is what is applied here."""
    import torchvision.transforms.v2.functional as TF

    x = frames.permute(0, 3, 1, 2)
    for op in d["order"]:
        if op == 0:
            x = TF.adjust_brightness(x, d["brightness"])
        elif op == 1:
            x = TF.adjust_contrast(x, d["contrast"])
        elif op == 2:
            x = TF.adjust_saturation(x, d["saturation"])
        elif d["hue"] < 0:
            x = TF.adjust_hue(x, -1.0 / 256)
    return x.permute(0, 2, 3, 1)


def train_views(views: list[dict], choice: str) -> list[int]:
    """Which stored views a training clip may draw from: `all` (the centre crop and every
    augmented view), `augmented` (those alone), `centre`, or a number N (the centre crop and the
    first N augmented views: what a store extracted with --aug-views N holds)."""
    check_views_train(choice)
    augmented = [i for i, v in enumerate(views) if v["kind"] == "simple"]
    if choice.isdigit():
        if int(choice) > len(augmented):
            raise AdviseCacheError(f"--views-train {choice}: the store holds {len(augmented)} augmented views")
        return [0, *augmented[: int(choice)]]
    if choice == "centre":
        return [0]
    if choice == "augmented":
        if not augmented:
            raise AdviseCacheError(
                "--views-train augmented: the store holds no augmented views (extract --aug-views N)"
            )
        return augmented
    return [0, *augmented]


def crop_views(views: list[dict], crops: int) -> list[int]:
    """The stored evaluation crops `evaluate --crops` averages over (1: the centre one)."""
    stored = [i for i, v in enumerate(views) if v["kind"] == "crop"]
    if not stored:
        raise AdviseCacheError("--crops: the store holds no evaluation crops (extract it with --crops 3)")
    if crops == 1:
        return [i for i in stored if views[i]["position"] == "centre"]
    if crops != len(stored):
        raise AdviseCacheError(f"--crops {crops}: the store holds {len(stored)} evaluation crop(s)")
    return stored
