"""Builders of small real inputs for tests and benchmarks (as `zarr.testing`): videos of random
smooth noise, a `folder` dataset of them, the video table of a store with no files behind it, and
a store of random tokens.

    write_video(Path("v.mp4"), 48)                      # a 48-frame mpeg4 file
    arrays = token_store(Path("s.zarr"), "ViT-B-16", (14, 14, 768), [64] * 8)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, frames: int, seed: int = 0, codec: str = "mpeg4", size=(72, 96), fps=25) -> Path:
    """A small real video of random smooth noise, for tests that need a specific file."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
            img = np.repeat(np.repeat(img, 8, 0), 8, 1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_folder_tree(root: Path, frames: tuple[int, ...]) -> Path:
    """A `folder` dataset: video i of frames[i] frames in class folder a or b, alternately."""
    for i, n in enumerate(frames):
        write_video(root / "ab"[i % 2] / f"v{i}.mp4", n, seed=i)
    return root


def video_table(lengths, names: list[str] | None = None, labels: list[int] | None = None) -> dict:
    """The video table `store.create_store` takes, of train videos with no file behind them."""
    n = len(lengths)
    return {
        "name": names or [f"v{i}" for i in range(n)],
        "path": [""] * n,
        "split": ["train"] * n,
        "label": labels or [0] * n,
        "fps": [25.0] * n,
        "source_frames": list(lengths),
        "probe_error": [""] * n,
    }


def token_store(
    path: Path,
    key: str,
    shape: tuple[int, int, int],
    lengths: list[int],
    seed: int = 0,
    fill: bool = True,
    codec: str | None = None,
    frame_crcs: bool = True,
    aug_views: int = 0,
):
    """A real store of `len(lengths)` train videos of random float16 tokens of `shape` (h, w, D)
    under IFM `key`; its IFMArrays. `fill=False` leaves the videos to be written. `frame_crcs=False`:
    its frames without a crc32c, as groups made before store format 3 (what the checks cost).
    `aug_views`: that many augmented views stored besides the centre crop (their tokens random too)."""
    from advise_cache.store import DEFAULT_CODEC, create_store, open_store
    from advise_cache.views import view_specs

    n = len(lengths)
    table_ = video_table(lengths, [f"v{i:05d}" for i in range(n)], [i % 4 for i in range(n)])
    create_store(path, "bench", str(path.parent), ["a", "b", "c", "d"], table_)
    info = {
        "model": key,
        "pretrained": "none",
        "weights_sha256": None,
        "input_size": 224,
        "grid": list(shape[:2]),
        "dim": shape[2],
        "normalisation": None,
        "precision": "fp32",
    }
    views = view_specs(aug_views, 0, seed, 224)
    arrays = open_store(path, mode="r+").add_ifm(key, info, 1, 64, codec=codec or DEFAULT_CODEC, views=views)
    if not frame_crcs:
        arrays = _without_frame_crcs(path, key)
    rng = np.random.default_rng(seed)
    for v, frames in enumerate(lengths if fill else []):
        rows = frames * len(views)
        arrays.write_video(v, rng.standard_normal((rows, *shape), dtype=np.float32).astype(np.float16))
    return arrays


def _without_frame_crcs(path: Path, key: str):
    """The empty token array of a new group made again without zarr's crc32c codec; its IFMArrays."""
    import zarr

    from advise_cache.store import open_store

    g = zarr.open_group(path / "ifm" / key, mode="a", use_consolidated=False)
    old = g["tokens"]
    codecs = old.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
    if any(c["name"] != "crc32c" for c in codecs[1:]):
        raise ValueError("frame_crcs=False is for uncompressed tokens")
    shape, chunks, shards, dtype = old.shape, old.chunks, old.shards, old.dtype
    del g["tokens"]
    g.create_array(
        "tokens",
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=None,
        fill_value=0,
        dimension_names=("row", "y", "x", "channel"),
    )
    return open_store(path, mode="r+").ifm(key)
