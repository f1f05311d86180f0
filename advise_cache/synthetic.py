"""A small synthetic action-recognition dataset, written as real encoded videos.

    from advise_cache.synthetic import generate_synthetic
    root = generate_synthetic("/tmp/synth")          # both families, seed 0, ~144 videos

It is the project's embedded default for demos and tests: no dataset can be downloaded
here, and writing real mpeg4 files means decoding is exercised downstream exactly as on
UCF101 or Diving48. Two families mirror the two kinds of benchmark in the paper, a third
is made for PRP:

- appearance (like UCF101): one frame is enough; each class is a distinct coloured shape,
  large (from a sixth of the centre square, the smallest triangle, to four fifths, the
  largest disc), moving in a way that is the same for every class. Large, because in real
  appearance datasets the class is mostly carried by what covers much of the frame (a
  scene, a big object, their colours), and that survives a spatial average of the tokens:
  pooling the grid to 1 should cost an appearance task little and a motion task much (the
  paper's Finding 1). With a small shape (format 2) the random-init test-vit's average over
  the grid diluted its look as much as it diluted a moving disc's position, and pooling
  cost the appearance family as many points as the motion family.
- temporal (like Diving48): every single frame looks alike; only the order of frames
  tells the class. A grey disc's brightness follows one of four profiles over the video:
  rising, falling, rising then falling, falling then rising. Each profile passes through
  every level between a low and a high gain at the same speed, so the distribution of a
  single frame is the same in all four classes: averaging per-frame features over time
  cannot tell them apart (chance), while the order of frames can.
- motion (made to show what PRP pretraining and spatial resolution are for): a small
  disc of random colour and size moves in a straight line, bouncing off the edges of the
  centre square (what the image model's centre crop keeps), over a still background. The
  four classes differ only in its speed, 1, 2, 4 or 8 times a base speed (each video
  jittered by up to ±15%), the same ratios as PRP's playback rates: perceiving the rate
  a clip plays at is perceiving this speed. The disc covers 2-5% of the frame and nothing
  else moves (the background is still and its noise faint), so a spatial average of the
  tokens keeps little of where it is.

- shifted (made for issue 21's study of augmented views): the appearance family's four shapes
  and colours, smaller (a radius of 15-20% of the short side) and nearly still, at the centre of
  the frame in the train videos and a fifth of the width to its left or right in the test videos.
  The class survives any crop that keeps the shape; what changes from train to test is only where
  it sits, so a model that saw the shape at one place only has a reason to gain from random crops.

These families are a sanity check of the implementation (does PRP teach the TMM what it
should, does pooling destroy what it should), not evidence about real videos.

Every video is drawn from its own generator seeded by (seed, split, class, index), so it
is identical run to run and independent of how many other videos are generated.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from statistics import NormalDist

import av
import numpy as np

from advise_cache.errors import LayoutError

log = logging.getLogger(__name__)

APPEARANCE_CLASSES: tuple[str, ...] = (
    "appearance_red_disc",
    "appearance_green_square",
    "appearance_blue_triangle",
    "appearance_yellow_ring",
)
TEMPORAL_CLASSES: tuple[str, ...] = (
    "temporal_brighten",
    "temporal_darken",
    "temporal_brighten_darken",
    "temporal_darken_brighten",
)
MOTION_CLASSES: tuple[str, ...] = (
    "motion_speed_1",
    "motion_speed_2",
    "motion_speed_4",
    "motion_speed_8",
)
SHIFTED_CLASSES: tuple[str, ...] = tuple("shifted_" + c.split("_", 1)[1] for c in APPEARANCE_CLASSES)
# Class ids for seeding come from this fixed order, so a temporal video is the same
# whether it was generated with family "temporal" or "both" (motion comes last, so adding
# it changed no earlier video).
_ALL_CLASSES = APPEARANCE_CLASSES + TEMPORAL_CLASSES + MOTION_CLASSES + SHIFTED_CLASSES
_SPLITS = ("train", "test")
_FAMILIES = {
    "both": APPEARANCE_CLASSES + TEMPORAL_CLASSES,
    "appearance": APPEARANCE_CLASSES,
    "temporal": TEMPORAL_CLASSES,
    "motion": MOTION_CLASSES,
    "shifted": SHIFTED_CLASSES,
}
_FPS_CHOICES = (12, 15, 24, 25, 30)
MARKER = "SYNTHETIC.json"
# Bump when the pictures change, so an old root is not mistaken for a current one.
_FORMAT_VERSION = 3

_SHAPE_COLOURS = {
    "appearance_red_disc": (225.0, 35.0, 35.0),
    "appearance_green_square": (40.0, 205.0, 60.0),
    "appearance_blue_triangle": (40.0, 70.0, 235.0),
    "appearance_yellow_ring": (240.0, 220.0, 40.0),
}
_GREY = 190.0  # the temporal object; brighter than any background pixel at gain 1
# Ranges as fractions of min(width, height) (radii) or as a global gain; a ramp's start
# and end are drawn from the same pair of ranges in both directions.
_APPEARANCE_RADIUS = (0.35, 0.5)  # format 2 had (0.14, 0.24): see the docstring
_TEMPORAL_RADIUS = (0.15, 0.3)
_MOTION_RADIUS = (0.08, 0.12)
_SHIFTED_RADIUS = (0.15, 0.2)
_SHIFTED_OFFSET = 0.2  # of the width: where a test video's shape sits, left or right of the centre
_MOTION_BASE_SPEED = 0.01  # fraction of min(width, height) per frame at speed 1
_MOTION_JITTER = 0.15
_LOW_GAIN = (0.3, 0.5)
_HIGH_GAIN = (1.05, 1.3)
# The standard normal's quantiles at the centres of 256 equal-probability bins.
_NORMAL_LUT = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
_QSCALE = 3  # mpeg4 fixed quantiser (2 = best): keeps ramps and noise, small files


def generate_synthetic(
    root: Path | str,
    family: str = "both",
    seed: int = 0,
    *,
    train_per_class: int = 12,
    test_per_class: int = 6,
    min_frames: int = 24,
    max_frames: int = 64,
    width: int = 96,
    height: int = 72,
) -> Path:
    """Write `root/{train,test}/<class>/<class>_<nnn>.mp4`, then `root/SYNTHETIC.json`.

    Does nothing if `root` already holds a dataset with the same parameters; raises
    `LayoutError` if it holds another one or unrelated files.
    """
    numbers = dict(
        seed=seed,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        min_frames=min_frames,
        max_frames=max_frames,
        width=width,
        height=height,
    )
    _check_parameters(family, **numbers)
    root = Path(root)
    classes = _FAMILIES[family]
    counts = {"train": train_per_class, "test": test_per_class}
    # Plain ints, so numpy integers neither break json nor the comparison with a marker.
    params = {
        "format_version": _FORMAT_VERSION,
        "family": family,
        **{key: int(value) for key, value in numbers.items()},
    }
    marker = root / MARKER
    if _already_there(root, marker, params):
        return root

    expected = {
        root / split / name / f"{name}_{i:03d}.mp4"
        for split in _SPLITS
        for name in classes
        for i in range(counts[split])
    }
    _clear_unfinished(root, expected)

    for split in _SPLITS:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, _SPLITS.index(split), _ALL_CLASSES.index(name), i])
                final = root / split / name / f"{name}_{i:03d}.mp4"
                partial = final.with_name(final.name + ".partial")
                fps = int(rng.choice(_FPS_CHOICES))
                _encode(partial, _render(name, rng, min_frames, max_frames, width, height, split), fps)
                os.replace(partial, final)  # a killed run never leaves a half .mp4

    info = {
        **params,
        "classes": list(classes),
        "appearance_classes": [c for c in classes if c in APPEARANCE_CLASSES],
        "temporal_classes": [c for c in classes if c in TEMPORAL_CLASSES],
        "motion_classes": [c for c in classes if c in MOTION_CLASSES],
        "num_videos": len(expected),
        "num_videos_per_split": {s: counts[s] * len(classes) for s in _SPLITS},
    }
    tmp = marker.with_name(MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    log.info("wrote %d synthetic videos to %s", len(expected), root)
    return root


def _check_parameters(family: str, seed, train_per_class, test_per_class, min_frames, max_frames, width, height):
    if family not in _FAMILIES:
        raise LayoutError(f"unknown synthetic family {family!r}: choose one of {', '.join(_FAMILIES)}")
    if seed < 0 or min(train_per_class, test_per_class) < 0 or not 1 <= min_frames <= max_frames:
        raise ValueError(
            "need seed >= 0, per-class counts >= 0 and 1 <= min_frames <= max_frames, got "
            f"seed={seed}, counts=({train_per_class}, {test_per_class}), "
            f"frames=({min_frames}, {max_frames})"
        )
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 16, got {width}x{height}")


def _already_there(root: Path, marker: Path, params: dict) -> bool:
    """Whether `root` holds this dataset already (its marker, with the same parameters); a
    dataset of other parameters there is refused."""
    if not marker.exists():
        return False
    found = json.loads(marker.read_text())
    differ = [f"{k}={found.get(k)!r}, asked {v!r}" for k, v in params.items() if found.get(k) != v]
    if differ:
        raise LayoutError(
            f"{root} already holds a synthetic dataset with other parameters ({'; '.join(differ)}); pick another root"
        )
    log.info("synthetic dataset already at %s", root)
    return True


def _clear_unfinished(root: Path, expected: set[Path]) -> None:
    """Remove what an interrupted run left; refuse a folder holding anything else.

    Without a marker the files already there may come from other parameters, so they
    are regenerated rather than trusted; only files this module could have written are
    ever deleted.
    """
    if not root.exists():
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        ours = (
            (len(rel) == 1 and (rel[0] in _SPLITS or rel[0] == MARKER + ".tmp"))
            or (len(rel) == 2 and rel[0] in _SPLITS and rel[1] in _ALL_CLASSES)
            or (
                len(rel) == 3
                and rel[0] in _SPLITS
                and rel[1] in _ALL_CLASSES
                and rel[2].startswith(rel[1] + "_")
                and rel[2].endswith((".mp4", ".mp4.partial"))
            )
        )
        if not ours:
            raise LayoutError(f"{root} is not empty and not a synthetic dataset (found {path}); pick another root")
    for path in list(root.rglob("*")):
        if path.is_file() and path not in expected:
            path.unlink()
    # A class folder left by a run of another family would read as an empty class.
    keep = {p.parent for p in expected}
    for path in list(root.glob("*/*")):
        if path not in keep:
            path.rmdir()


# Brightness profiles in [0, 1] over the video's time in [0, 1]. Each is piecewise linear
# with slope of magnitude 1 or 2 covering [0, 1] evenly, so a frame's level is uniform in
# [0, 1] whatever the class.
_PROFILES = {
    "temporal_brighten": lambda u: u,
    "temporal_darken": lambda u: 1 - u,
    "temporal_brighten_darken": lambda u: 1 - np.abs(2 * u - 1),
    "temporal_darken_brighten": lambda u: np.abs(2 * u - 1),
}


def _render(
    name: str,
    rng: np.random.Generator,
    min_frames: int,
    max_frames: int,
    width: int,
    height: int,
    split: str = "train",
) -> np.ndarray:
    """Return the (T, H, W, 3) uint8 frames of one video of class `name` (of `split`: where a
    shifted video's shape sits). The random draws come in one fixed order (a video is its seed)."""
    n = int(rng.integers(min_frames, max_frames + 1))
    t = np.arange(n, dtype=np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = _background(name, rng, t, x, y)
    base = rng.uniform(50, 110, 3)
    amplitude = rng.uniform(15, 30, 3)
    radius, centre, name = _object_path(name, rng, t, width, height, split)
    dx = x[None] - centre[0][:, None, None].astype(np.float32)
    dy = y[None] - centre[1][:, None, None].astype(np.float32)
    alpha = _shape_alpha(name, rng, dx, dy, radius[:, None, None])
    colour = _SHAPE_COLOURS.get(name, (_GREY, _GREY, _GREY))
    if name in MOTION_CLASSES:  # any light colour: only the speed tells the class
        colour = tuple(rng.uniform(150, 250, 3))
    gain = np.ones(n, np.float32)
    if name in TEMPORAL_CLASSES:
        low, high = rng.uniform(*_LOW_GAIN), rng.uniform(*_HIGH_GAIN)
        gain = (low + (high - low) * _PROFILES[name](t / max(n - 1, 1))).astype(np.float32)  # ramp 0 -> 1
    sigma = np.float32(rng.uniform(2.0, 6.0))
    if name in MOTION_CLASSES:
        sigma = np.float32(rng.uniform(1.0, 2.0))  # fainter: frame-to-frame noise would mask slow motion

    # One channel at a time: numpy is several times slower broadcasting over a last
    # axis of length 3 than over whole (T, H, W) planes.
    out = np.empty((n, height, width, 3), np.uint8)
    for c in range(3):
        plane = np.float32(base[c]) + np.float32(amplitude[c]) * texture
        plane += alpha * (np.float32(colour[c]) - plane)
        plane *= gain[:, None, None]
        # Sensor-like noise after the gain, so its level never hints at the class.
        # Gaussian quantiles looked up from random bytes: 4x faster than rng.normal.
        noise = _NORMAL_LUT[np.frombuffer(rng.bytes(plane.size), np.uint8)]
        plane += sigma * noise.reshape(plane.shape) + np.float32(0.5)
        out[..., c] = np.clip(plane, 0, 255)
    return out


def _background(name: str, rng: np.random.Generator, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The (T, H, W) texture in [-1, 1]: a sum of smooth sinusoids (wavelength 12-48 px)
    translating with one random velocity (still in the motion classes: nothing but the object
    moves there). Its distribution is the same for every class."""
    k = 5
    freq = rng.uniform(1 / 48, 1 / 12, k)
    angle = rng.uniform(0, 2 * np.pi, k)
    fx, fy = freq * np.cos(angle), freq * np.sin(angle)
    speed, heading = rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
    if name in MOTION_CLASSES:
        speed = 0.0  # nothing but the object moves: its speed is the class
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    phase0 = rng.uniform(0, 2 * np.pi, k)
    weight = rng.uniform(0.5, 1.0, k)
    # cos(P + wt) = cos P cos wt - sin P sin wt turns all frames into one product.
    spatial = 2 * np.pi * (fx[:, None] * x.ravel() + fy[:, None] * y.ravel()) + phase0[:, None]
    omega = -2 * np.pi * (fx * vx + fy * vy)
    in_time = np.concatenate([np.cos(np.outer(t, omega)), -np.sin(np.outer(t, omega))], axis=1)
    in_space = np.concatenate([np.cos(spatial), np.sin(spatial)]) * np.tile(weight, 2)[:, None]
    in_space /= weight.sum()  # the texture lies in [-1, 1]
    # einsum, not @: a matmul this small is not worth OpenBLAS threads spinning on all cores.
    texture = np.einsum("tk,kp->tp", in_time.astype(np.float32), in_space.astype(np.float32))
    return texture.reshape(len(t), *x.shape)


def _object_path(name: str, rng: np.random.Generator, t: np.ndarray, width: int, height: int, split: str):
    """The object's radius per frame and its centre's (x, y) path, and the class whose shape and
    colour it has (a shifted class draws an appearance class's shape)."""
    n, side = len(t), min(width, height)
    if name in APPEARANCE_CLASSES:
        radius = np.full(n, rng.uniform(*_APPEARANCE_RADIUS) * side, np.float32)
    elif name in MOTION_CLASSES:
        radius = np.full(n, rng.uniform(*_MOTION_RADIUS) * side, np.float32)
    elif name in SHIFTED_CLASSES:
        radius = np.full(n, rng.uniform(*_SHIFTED_RADIUS) * side, np.float32)
    else:  # temporal: a grey disc of one size, the same distribution in every class
        radius = np.full(n, rng.uniform(*_TEMPORAL_RADIUS) * side, np.float32)
    if name in MOTION_CLASSES:
        return radius, _bouncing_path(name, rng, t, float(radius[0]), width, height), name
    if name in SHIFTED_CLASSES:
        return radius, _shifted_place(rng, t, width, height, split), "appearance_" + name.split("_", 1)[1]
    centre = []  # a smooth sinusoid per axis, kept inside the frame
    for dim in (width, height):
        lo, hi = float(radius.max()), dim - float(radius.max())
        if hi <= lo:
            lo = hi = dim / 2
        rate, phase = rng.uniform(0.04, 0.12), rng.uniform(0, 2 * np.pi)  # rad per frame
        centre.append(lo + (hi - lo) * (0.5 + 0.5 * np.sin(rate * t + phase)))
    return radius, centre, name


def _shape_alpha(name: str, rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The shape's coverage of each pixel: signed distances (negative inside), anti-aliased over
    one pixel."""
    if name == "appearance_green_square" or name == "appearance_blue_triangle":
        theta = rng.uniform(0, 2 * np.pi)
        cos, sin = math.cos(theta), math.sin(theta)  # python floats keep arrays float32
        u, v = cos * dx + sin * dy, cos * dy - sin * dx
        if name == "appearance_green_square":
            dist = np.maximum(np.abs(u), np.abs(v)) - 0.8 * r
        else:  # equilateral, circumradius r: three half-planes at distance r / 2
            sides = [math.pi / 2 + i * 2 * math.pi / 3 for i in range(3)]
            dist = np.maximum.reduce([math.cos(a) * u + math.sin(a) * v for a in sides]) - 0.5 * r
    elif name == "appearance_yellow_ring":
        dist = np.abs(np.hypot(dx, dy) - 0.72 * r) - 0.28 * r
    else:
        dist = np.hypot(dx, dy) - r
    return np.clip(0.5 - dist, 0.0, 1.0)


def _shifted_place(rng: np.random.Generator, t: np.ndarray, width: int, height: int, split: str) -> list:
    """Centre (x, y) per frame of a shifted video's shape: the frame's centre in train videos,
    _SHIFTED_OFFSET of the width to the left or right in test ones, wobbling by 2% of the side."""
    side = min(width, height)
    x = width / 2 + (0.0 if split == "train" else rng.choice([-1, 1]) * _SHIFTED_OFFSET * width)
    rate, phase = rng.uniform(0.04, 0.12, 2), rng.uniform(0, 2 * np.pi, 2)
    wobble = 0.02 * side * np.sin(np.outer(rate, t) + phase[:, None])
    return [(x + wobble[0]).astype(np.float32), (height / 2 + wobble[1]).astype(np.float32)]


def _bouncing_path(
    name: str, rng: np.random.Generator, t: np.ndarray, radius: float, width: int, height: int
) -> list[np.ndarray]:
    """Centre (x, y) per frame of a disc moving straight at the class's speed, reflected
    off the edges of the centre square (the part the image model's centre crop keeps)."""
    side = min(width, height)
    factor = int(name.rsplit("_", 1)[1])
    speed = _MOTION_BASE_SPEED * side * factor * rng.uniform(1 - _MOTION_JITTER, 1 + _MOTION_JITTER)
    heading = rng.uniform(0, 2 * np.pi)
    centre = []
    for dim, velocity in ((width, speed * math.cos(heading)), (height, speed * math.sin(heading))):
        lo = (dim - side) / 2 + radius
        span = max(side - 2 * radius, 1.0)
        # A straight line folded into [lo, lo + span]: a triangle wave of period 2 * span.
        q = np.mod(rng.uniform(0, span) + velocity * t, 2 * span)
        centre.append((lo + np.where(q < span, q, 2 * span - q)).astype(np.float32))
    return centre


def _encode(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames as mpeg4/yuv420p in an mp4 container at a fixed quantiser."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        ctx = stream.codec_context
        ctx.qscale = True  # fixed quality (ffmpeg's -q:v), not a bit-rate target
        ctx.global_quality = _QSCALE * 118  # FF_QP2LAMBDA
        ctx.thread_count = 1  # a single thread keeps the bitstream reproducible
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
