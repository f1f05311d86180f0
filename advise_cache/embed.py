"""One clip embedding per video from a trained TMM, saved for analysis, optionally as a t-SNE plot.

    advise-cache embed --cache ucf101.zarr --checkpoint runs/prp --out emb.npz --plot tsne.png

A video's embedding is the pooled TMM output the head sees (`ClipClassifier.features`),
averaged over `views` clips spread over the video, exactly as `evaluate` averages logits.
Any checkpoint works, PRP-pretrained or fine-tuned: the head is not used. The .npz holds
`embeddings` (N, C) float32, `names`, `labels` (-1 where unlabelled), `classes`, and `meta`
(a JSON string: checkpoint, store, split, views, clip mode). The 2-D plot uses scikit-learn's
t-SNE (PCA initialisation, fixed seed); its axes have no units, only neighbourhoods mean
something.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AdviseCacheError, MismatchError, StoreError, writing
from .evaluate import video_outputs
from .figures import pyplot, save_figure
from .runtime import resolve_device
from .store import open_store
from .trained import load_model

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    embeddings: np.ndarray  # (N, C) float32
    names: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int64, -1 where unlabelled
    classes: list[str]
    meta: dict


def embed(
    cache: Path,
    checkpoint: Path,
    views: int = 4,
    split: str = "test",
    device: str = "auto",
    mode: str | None = None,
    progress=None,
) -> Embeddings:
    """Per video of `split` ("all" for every split), the view-averaged pooled TMM output."""
    if views < 1:
        raise MismatchError("--views must be >= 1")
    store = open_store(cache)
    dev = resolve_device(device)
    model, meta, source = load_model(checkpoint, store, dev)
    videos, skipped = source.videos(None if split == "all" else split)
    if not len(videos):
        raise StoreError(
            f"{cache}: no done video in split {split!r} "
            f"(splits: {', '.join(sorted(set(store.videos.split.tolist())))}, or all)"
        )
    if skipped:
        log.warning("skipping %d video(s) of split %r that are not done in the store", skipped, split)
    sampler = meta.config.sampler
    mode = mode or meta.config.clip_mode
    iterate = progress or (lambda xs: xs)
    features = np.concatenate(
        [
            video_outputs(model, source, chunk, views, sampler.frames, sampler.stride, mode, dev, what="features")
            for chunk in iterate(np.array_split(videos, max(1, len(videos) // 16)))
        ]
    ).astype(np.float32)
    info = {
        "checkpoint": str(checkpoint),
        "store": str(cache),
        "split": split,
        "views": views,
        "clip_mode": mode,
        "frames": sampler.frames,
        "stride": sampler.stride,
        "task": meta.task,
        "skipped": skipped,
    }
    names = np.array([str(n) for n in store.videos.name[videos]])  # zarr gives StringDType; npz wants <U
    return Embeddings(features, names, store.videos.label[videos].astype(np.int64), store.classes, info)


def save_embeddings(path: Path, emb: Embeddings) -> None:
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: np.savez would otherwise append .npz to any name
            np.savez(
                f,
                embeddings=emb.embeddings,
                names=emb.names,
                labels=emb.labels,
                classes=np.asarray(emb.classes, dtype=str),
                meta=json.dumps(emb.meta),
            )


def load_embeddings(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as z:
        return Embeddings(z["embeddings"], z["names"], z["labels"], z["classes"].tolist(), json.loads(str(z["meta"])))


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, C) -> (N, 2) t-SNE coordinates (scikit-learn; perplexity capped for small N)."""
    if len(x) < 3:
        raise AdviseCacheError(f"a t-SNE plot needs at least 3 videos, got {len(x)}")
    if not np.ptp(x, axis=0).any():  # PCA's start divides by their spread: NaN, then a crash
        raise AdviseCacheError(
            f"all {len(x)} embeddings are identical (the same video over and over?): t-SNE has nothing to lay out"
        )
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise AdviseCacheError("--plot needs scikit-learn (pip install scikit-learn)") from e
    perplexity = float(min(30.0, (len(x) - 1) / 3))  # must stay below N; ~N/3 keeps small sets stable
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: the layout is reproducible, and beside torch's own thread pool more
    # threads were measured 10-20x slower on a busy 2-core machine (spinning, not working).
    with threadpool_limits(1):
        return tsne.fit_transform(np.asarray(x, np.float64)).astype(np.float32)


def plot_embeddings(emb: Embeddings, path: Path, seed: int = 0) -> np.ndarray:
    """Draw a 2-D t-SNE of the embeddings coloured by class; returns the coordinates."""
    plt = pyplot()
    xy = tsne_2d(emb.embeddings, seed)
    present = sorted(set(emb.labels.tolist()))
    cmap = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, label in enumerate(present):
        at = emb.labels == label
        name = emb.classes[label] if 0 <= label < len(emb.classes) else "unlabelled"
        colour = "0.6" if label < 0 else cmap(i % cmap.N)
        ax.scatter(xy[at, 0], xy[at, 1], s=22, color=colour, label=f"{name} ({int(at.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    m = emb.meta
    ax.set_title(
        f"t-SNE of pooled TMM outputs: {len(xy)} videos of {m['split']}, {m['views']} views\n{m['checkpoint']}",
        fontsize=9,
    )
    if len(present) <= 30:
        ax.legend(fontsize=7, loc="best", markerscale=1.2)
    fig.tight_layout()
    save_figure(fig, path)
    return xy
