"""Multi-view evaluation of a fine-tuned TMM on the store's test split.

    advise-cache evaluate --cache ucf101.zarr --checkpoint runs/ft/checkpoint.pt --views 4
    advise-cache evaluate --cache ucf101.zarr --checkpoint runs/ft --views 10 --crops 3

For each test video, `views` clips spread evenly over the video go through the model and
their logits are averaged; top-1, top-5, per-class accuracy and a confusion matrix follow.
With `crops` (a store extracted with `--crops 3`, views.py) each clip is read from every stored
evaluation crop and the logits are averaged over clips x crops, as the released code's 10 x 3.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .checkpoint import append_metrics, check_classes
from .curves import plot_curves
from .errors import AdviseCacheError, MismatchError, StoreError
from .figures import pyplot, save_figure
from .loader import TokenSource, collate
from .models import ClipClassifier
from .runtime import resolve_device
from .sampling import multi_view_clips
from .store import open_store
from .trained import load_model
from .views import crop_views

log = logging.getLogger(__name__)


@torch.no_grad()
def video_outputs(
    model: ClipClassifier,
    source: TokenSource,
    videos,
    views: int,
    frames: int,
    stride: int,
    mode: str,
    device: torch.device,
    batch_size: int = 32,
    what: str = "logits",
    stored: tuple[int, ...] = (0,),
) -> np.ndarray:
    """Per video, the mean over `views` clips, each read from every stored view in `stored` (0:
    the centre crop), of the logits (or of the pooled `features`). The clips go through the
    model `batch_size` at a time, so memory does not grow with `views`."""
    fn = model if what == "logits" else model.features
    out = []
    for v in videos:
        clips = [
            (idx, k) for idx in multi_view_clips(int(source.frames[v]), frames, stride, views, mode) for k in stored
        ]
        total = 0
        for i in range(0, len(clips), batch_size):
            x = collate([source.clip(int(v), idx, device, k) for idx, k in clips[i : i + batch_size]])
            total = total + fn(x.to(device)).float().sum(0)
        out.append((total / len(clips)).cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def evaluate(
    cache: Path,
    checkpoint: Path,
    views: int = 4,
    split: str = "test",
    device: str = "auto",
    mode: str | None = None,
    confusion_png: Path | None = None,
    progress=None,
    crops: int | None = None,
) -> dict:
    """Top-1/top-5 and per-class accuracy of a classification checkpoint on a store's split;
    `crops` (1 or 3): over the store's evaluation crops too (None: the centre crop alone)."""
    if views < 1:
        raise MismatchError("--views must be >= 1")
    store = open_store(cache)
    dev = resolve_device(device)
    model, meta, source = load_model(checkpoint, store, dev)
    stored = (0,) if crops is None else tuple(crop_views(source.views, crops))
    if meta.task != "classify":
        raise MismatchError(f"{checkpoint} is a {meta.task} checkpoint; evaluate a fine-tuned one")
    if meta.num_classes != len(store.classes):
        raise MismatchError(f"{checkpoint} predicts {meta.num_classes} classes; {cache} has {len(store.classes)}")
    check_classes(meta.classes, store.classes, f"{checkpoint}", str(cache))
    videos, skipped = source.videos(split)
    if not len(videos):
        raise StoreError(f"{cache}: no done video in split {split!r}")
    labels = store.videos.label[videos]
    if (labels < 0).any():
        raise StoreError(f"{cache}: split {split!r} has no labels to evaluate against")
    sampler = meta.config.sampler
    mode = mode or meta.config.clip_mode
    iterate = progress or (lambda xs: xs)
    logits = np.concatenate(
        [
            video_outputs(model, source, chunk, views, sampler.frames, sampler.stride, mode, dev, stored=stored)
            for chunk in iterate(np.array_split(videos, max(1, len(videos) // 16)))
        ]
    )
    classes = store.classes
    ranked = np.argsort(-logits, axis=1)
    top1 = ranked[:, 0] == labels
    top5 = (ranked[:, : min(5, len(classes))] == labels[:, None]).any(axis=1)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)
    per_class = {c: float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(classes) if confusion[i].sum()}
    result = {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "views": views,
        "crops": crops,  # None: the centre crop (of a store's every frame) alone
        "videos": int(len(videos)),
        "skipped": skipped,
        "split": split,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "checkpoint": str(checkpoint),
        "store": str(cache),
    }
    if confusion_png is not None:
        plot_confusion(confusion, classes, Path(confusion_png), f"top-1 {100 * result['top1']:.1f}%")
        result["confusion_png"] = str(confusion_png)
    _record(Path(checkpoint), meta, result)
    return result


def _record(checkpoint: Path, meta, result: dict) -> None:
    """Add the score to the run folder's metrics.jsonl and curves.png (test top-1 beside the
    training curves), where the checkpoint is a run folder's own and the folder can be written."""
    run = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if not (run / "metrics.jsonl").is_file() or meta.metrics is None:
        return
    line = {k: result[k] for k in ("split", "views", "top1", "top5")}
    line = {"kind": "eval", "step": meta.step, "epochs": meta.metrics["epoch"] + 1, **line}
    try:
        append_metrics(run / "metrics.jsonl", line)
        plot_curves(run)
    except (OSError, AdviseCacheError) as e:  # someone else's run, a read-only copy: the score stands
        log.info("not recorded in %s: %s", run, e)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    n = len(classes)
    size = min(20, 2 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
