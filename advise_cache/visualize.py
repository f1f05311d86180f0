"""Where a temporal module responds: activation maps over a video's frames (the paper's Figure 7).

    advise-cache visualize --cache synth.zarr --checkpoint runs/ft-prp --compare runs/ft-scratch \
        --video test/temporal_brighten_darken/temporal_brighten_darken_000 --out activation.png

The clip's tokens come from the store; the frames under them are decoded again from the
video file (with the IFM's own resize and centre crop, so a token cell lies over the pixels
it was computed from). For each model the activation at every (t, y, x) of the clip is the
channel-wise L2 norm of the TMM's output feature maps (B, C, T, h, w) -> (T, h, w); it is
min-max normalised over the whole clip (one scale per row, so frames of a row compare, rows
do not), upsampled bilinearly onto the crop and drawn over the frame. Rows: the checkpoints
given, an untrained TMM of the first checkpoint's configuration (seed `UNTRAINED_SEED`), and
the IFM's own tokens (their channel-wise L2 norm: what every TMM starts from).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import CheckpointMeta
from .errors import DecodeError, MismatchError, StoreError, writing
from .ifm_arrays import IFMMeta
from .loader import collate
from .models import ClipClassifier, create_model
from .pixels import PixelSpec
from .runtime import resolve_device
from .sampling import multi_view_clips
from .store import Store, open_store
from .trained import load_model
from .video import decode_frames

log = logging.getLogger(__name__)

UNTRAINED_SEED = 0
ACTIVATION = "channel-wise L2 norm of the feature maps"


@dataclass
class ActivationRow:
    label: str
    maps: np.ndarray  # (T, S, S) float32 in [0, 1]
    low: float  # the raw activation's min and max over the clip, before normalising
    high: float


@dataclass
class Activations:
    video: str
    clip: np.ndarray  # (T,) indices among the video's stored frames
    source_frames: np.ndarray  # (T,) the same frames' indices in the video file
    frames: np.ndarray  # (T, S, S, 3) uint8 centre crops, as the IFM saw them
    rows: list[ActivationRow]


# -- finding the video ---------------------------------------------------------------------
def find_video(store: Store, name: str) -> int:
    """Index of the video called `name` in the store's table."""
    hits = np.flatnonzero(store.videos.name == name)
    if not len(hits):
        names = store.videos.name
        close = [str(n) for n in names if name.lower() in str(n).lower()][:5] or [str(n) for n in names[:5]]
        raise StoreError(f"{store.path} has no video named {name!r} ({len(names)} videos; e.g. {', '.join(close)})")
    return int(hits[0])


def video_path(store: Store, video: int, video_root: Path | None = None) -> Path:
    """Where the video's file is: as recorded, or moved under `video_root` (the dataset root
    recorded in the store is replaced by it)."""
    recorded = Path(str(store.videos.path[video]))
    if video_root is None:
        return recorded
    root = Path(str(store.root or ""))
    try:
        rel = recorded.relative_to(root)
    except ValueError:
        raise StoreError(
            f"{store.path}: video path {recorded} is not under the recorded dataset root "
            f"{root}; cannot place it under --video-root"
        ) from None
    return Path(video_root) / rel


def pixel_spec(meta: IFMMeta) -> PixelSpec:
    """The IFM's pixel preprocessing, as recorded in the store."""
    return PixelSpec(size=meta.input_size, mean=meta.mean, std=meta.std, interpolation=meta.interpolation)


def load_frames(store: Store, video: int, key: str, video_root: Path | None = None) -> np.ndarray:
    """The video's stored frames decoded again: (frames, S, S, 3) uint8 crops, one per token row."""
    meta = store.ifm(key).meta
    path = video_path(store, video, video_root)
    name = str(store.videos.name[video])
    try:
        frames = decode_frames(path, pixel_spec(meta), meta.frame_stride, meta.resize)
    except DecodeError as e:
        hint = "" if video_root else (f"; if the dataset moved from {store.root}, give its new place with --video-root")
        raise DecodeError(f"cannot read video {name}: {e}{hint}") from e
    expected = int(store.ifm(key).frames[video])
    if len(frames) != expected:
        raise DecodeError(
            f"{path} decodes to {len(frames)} frames but the store holds {expected} for "
            f"{name}; the file changed since extraction"
        )
    return frames


# -- activations ---------------------------------------------------------------------------
def channel_norm(maps: torch.Tensor) -> np.ndarray:
    """(C, T, h, w) feature maps -> (T, h, w) channel-wise L2 norm, float32."""
    return torch.linalg.vector_norm(maps.float(), dim=0).cpu().numpy()


def normalise(maps: np.ndarray) -> np.ndarray:
    """Min-max over the whole array to [0, 1]; a constant map becomes all zeros."""
    low, high = float(maps.min()), float(maps.max())
    return ((maps - low) / (high - low) if high > low else np.zeros_like(maps)).astype(np.float32)


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(T, h, w) -> (T, size, size), bilinear (each map spans the whole crop)."""
    x = torch.from_numpy(np.ascontiguousarray(maps, np.float32))[:, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _row(label: str, raw: np.ndarray, size: int) -> ActivationRow:
    return ActivationRow(label, upsample(normalise(raw), size), float(raw.min()), float(raw.max()))


def _describe(
    checkpoint: Path, meta: CheckpointMeta, model: ClipClassifier, x: torch.Tensor, classes: list[str]
) -> str:
    path = Path(checkpoint)
    name = path.name if path.is_dir() else path.parent.name
    if meta.task == "prp":
        kind = "PRP-pretrained"
    elif meta.config.linear_probe:
        kind = "linear probe"
    elif meta.init:
        init = Path(meta.init)
        kind = f"fine-tuned from {init.name if init.is_dir() else init.parent.name}"
    else:
        kind = "fine-tuned from scratch"
    label = f"{name}\n{kind}"
    if meta.task == "classify" and meta.classes == classes:
        p = torch.softmax(model(x).float(), dim=1)[0]
        label += f"\npredicts {classes[int(p.argmax())]} ({float(p.max()):.2f})"
    return label


MAX_COLUMNS = 64  # frames in one figure: wider is unreadable, and its pixels grow with every column


@torch.no_grad()
def compute_activations(
    cache: Path,
    checkpoints: list[Path],
    video: str,
    frames: int = 8,
    video_root: Path | None = None,
    device: str = "auto",
    seed: int = UNTRAINED_SEED,
) -> Activations:
    """Activation maps of each checkpoint's TMM, an untrained TMM and the IFM on one clip.

    The clip is the centre view (`multi_view_clips`, one view) of `frames` frames with the
    first checkpoint's stride and clip mode; every row sees the same clip.
    """
    if not checkpoints:
        raise MismatchError("give at least one checkpoint")
    if frames < 1:
        raise MismatchError(f"--frames must be >= 1, got {frames}")
    store = open_store(cache)
    v = find_video(store, video)
    dev = resolve_device(device)
    loaded = [load_model(c, store, dev) for c in checkpoints]
    _, first_meta, source = loaded[0]
    if not source.done[v]:
        raise StoreError(f"video {video} is not extracted in {cache} (status: not done)")
    n = int(source.frames[v])
    if frames > min(n, MAX_COLUMNS):
        raise MismatchError(
            f"--frames {frames}: {video} has {n} stored frames, and a figure takes at most {MAX_COLUMNS} columns"
        )
    cfg = first_meta.config
    clip = multi_view_clips(n, frames, cfg.sampler.stride, 1, cfg.clip_mode)[0]
    key = source.keys[0]
    crops = load_frames(store, v, key, video_root)[clip]
    size = crops.shape[1]
    x = collate([source.clip(v, clip, dev)])

    rows = []
    for checkpoint, (model, meta, src) in zip(checkpoints, loaded):
        if src.keys != source.keys:
            raise MismatchError(
                f"{checkpoint} reads image models {src.keys}; {checkpoints[0]} reads "
                f"{source.keys}: compare checkpoints trained on the same features"
            )
        fmap = model.feature_maps(x)[0]
        rows.append(_row(_describe(checkpoint, meta, model, x, store.classes), channel_norm(fmap), size))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        untrained = create_model(first_meta.tmm, first_meta.num_classes)
    untrained.to(dev).eval()
    raw = channel_norm(untrained.feature_maps(x)[0])
    rows.append(_row(f"untrained TMM\n(same config, seed {seed})", raw, size))
    ifm_name = " + ".join(store.ifm(k).meta.model for k in source.keys)
    rows.append(_row(f"IFM tokens\n({ifm_name})", channel_norm(x[0]), size))
    stride = store.ifm(key).meta.frame_stride
    return Activations(video, clip, clip * stride, crops, rows)


# -- the figure ----------------------------------------------------------------------------
# The grid is composed in pixels and placed unresampled (`figimage`): frames enlarged by a
# whole factor with nearest neighbours stay exact, and the PNG stays small.
LABEL, BAR, TITLE, BOTTOM, GAP = 200, 70, 64, 6, 3  # pixels
TARGET_CELL = 128  # pixels per frame, approximately


def cell_pixels(size: int) -> int:
    """The frame cell's side: the crop enlarged or reduced by a whole factor, near TARGET_CELL."""
    if size >= TARGET_CELL:
        return size // max(1, round(size / TARGET_CELL))
    return size * max(1, round(TARGET_CELL / size))


def figure_size(rows: int, cols: int, size: int) -> tuple[int, int]:
    """Pixel (width, height) of the figure: `rows` model rows under the frames row, `cols`
    frames, crops of `size` pixels."""
    cell = cell_pixels(size)
    return (LABEL + cols * cell + (cols - 1) * GAP + BAR, TITLE + (rows + 1) * cell + rows * GAP + BOTTOM)


def _raw_range(row: ActivationRow) -> str:
    text = f"raw {row.low:.3g}..{row.high:.3g}"
    spread = (row.high - row.low) / max(abs(row.high), 1e-12)
    # A near-constant map looks as contrasted as any other once min-max normalised: say so.
    return text + (f" (spread {100 * spread:.2g}%)" if spread < 0.05 else "")


def compose_grid(acts: Activations, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """The cells as one (H, W, 3) uint8 image: frames on top, each row's map blended over them."""
    import matplotlib

    colours = matplotlib.colormaps[cmap]
    size = acts.frames.shape[1]
    cell = cell_pixels(size)
    resample = Image.NEAREST if cell >= size else Image.BOX
    cols, nrows = len(acts.frames), len(acts.rows) + 1
    canvas = np.full((nrows * cell + (nrows - 1) * GAP, cols * cell + (cols - 1) * GAP, 3), 255, np.uint8)
    for r in range(nrows):
        for c in range(cols):
            img = acts.frames[c].astype(np.float32)
            if r:
                heat = colours(acts.rows[r - 1].maps[c])[..., :3] * 255
                img = (1 - alpha) * img + alpha * heat
            img = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
            img = np.asarray(img.resize((cell, cell), resample))
            y, x = r * (cell + GAP), c * (cell + GAP)
            canvas[y : y + cell, x : x + cell] = img
    return canvas


def plot_activations(acts: Activations, out: Path, cmap: str = "jet", dpi: int = 100) -> tuple[int, int]:
    """Draw the grid with its labels to `out` (PNG); returns the image's pixel (width, height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, nrows = len(acts.frames), len(acts.rows) + 1
    size = acts.frames.shape[1]
    cell = cell_pixels(size)
    width, height = figure_size(len(acts.rows), cols, size)
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.figimage(compose_grid(acts, cmap), LABEL, BOTTOM, origin="upper")

    def text(x: float, y: float, s: str, **kw) -> None:  # pixel coordinates, origin bottom-left
        fig.text(x / width, y / height, s, **kw)

    top = height - TITLE  # the grid's top edge
    text(
        width / 2,
        height - 6,
        f"{acts.video}: activation = {ACTIVATION},\nmin-max normalised per row over the clip",
        ha="center",
        va="top",
        fontsize=9,
    )
    for c in range(cols):
        text(
            LABEL + c * (cell + GAP) + cell / 2,
            top + 3,
            f"frame {acts.source_frames[c]}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    for r in range(nrows):
        row = acts.rows[r - 1] if r else None
        label = "frames" if row is None else f"{row.label}\n{_raw_range(row)}"
        text(LABEL - 8, top - r * (cell + GAP) - cell / 2, label, ha="right", va="center", fontsize=7)
    bar = fig.add_axes(((width - BAR + 12) / width, 0.15, 12 / width, 0.6))
    fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap), cax=bar)
    bar.tick_params(labelsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    out = Path(out)
    with writing(out), Image.open(buf) as im:  # RGB and an optimised deflate: about 10% smaller, lossless
        out.parent.mkdir(parents=True, exist_ok=True)
        im.convert("RGB").save(out, format="png", optimize=True)
    return width, height


def visualize(
    cache: Path,
    checkpoints: list[Path],
    video: str,
    out: Path,
    frames: int = 8,
    video_root: Path | None = None,
    device: str = "auto",
) -> Activations:
    """`compute_activations`, then `plot_activations` to `out`."""
    acts = compute_activations(cache, checkpoints, video, frames, video_root, device)
    plot_activations(acts, out)
    log.info("wrote %s (%d model rows x %d frames)", out, len(acts.rows), len(acts.frames))
    return acts
