"""What a store will cost before it is made: bytes per frame and in all, and whether they fit.

    advise-cache extract ucf101 --root /data/UCF101 --out ucf101.zarr --dry-run

`extract --dry-run` probes the videos (as every run does before writing), builds the model
on the meta device for its grid and width (no weights), and prints a `SizePlan`; a real run
checks the same plan against the free space before it creates anything (`check_fits`).

The bytes are those `extract` writes for the tokens, exactly: each video's stored frames
(ceil(source frames / stride)) times h × w tokens of `token_bytes(D)` and the frame's 4-byte
crc32c (`shards.CRC_BYTES`), plus, for every shard file, the index that ends it
(`shards.index_bytes`). (Resuming a group made before format 3, whose frames carry no crc32c,
writes 4 bytes a frame less.) The rest of a store (the video table,
three one-chunk files per video for status, reason and checksum, the zarr.json files) is a
few kB per video, left to `SLACK_*` in the fit check. With a codec the plan is an upper
bound: compression only shrinks the chunks (about 10%, BENCHMARKS.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AdviseCacheError, StoreError
from .shards import CRC_BYTES, index_bytes

# Stored bytes of one token of width D, per dtype that extract can store. A new dtype is one
# line here (int8 with a float16 scale per token would be `lambda dim: dim + 2`); the plan
# offers every entry of PLAN_DTYPES that is in this table.
TOKEN_BYTES: dict[str, Callable[[int], int]] = {
    "float16": lambda dim: 2 * dim,
    "float32": lambda dim: 4 * dim,
    "int8": lambda dim: dim + 2,  # one byte a channel and a float16 scale (quant.py)
}
PLAN_DTYPES = ("float16", "int8")  # the savings shown side by side, where extract stores them
PLAN_STRIDES = (1, 2)

# Room the fit check keeps besides the tokens: a file-system block for the tail of each shard
# file, three one-block files per video (status, reason, checksum) and the metadata.
BLOCK = 4096
SLACK_FIXED = 1 << 20


def token_bytes(dim: int, dtype: str) -> int:
    if dtype not in TOKEN_BYTES:
        raise AdviseCacheError(f"unsupported token dtype {dtype!r}; use {' or '.join(TOKEN_BYTES)}")
    return TOKEN_BYTES[dtype](dim)


def frame_bytes(grid: tuple[int, int], dim: int, dtype: str) -> int:
    return grid[0] * grid[1] * token_bytes(dim, dtype)


def stored_frames(source_frames, frame_stride: int) -> np.ndarray:
    """Rows a video gets in the store: its source frames 0, stride, 2 × stride, ..."""
    return -(-np.asarray(source_frames, np.int64) // frame_stride)


def video_bytes(
    source_frames,
    frame_stride: int,
    grid: tuple[int, int],
    dim: int,
    dtype: str,
    frames_per_shard: int,
    views: int = 1,
) -> np.ndarray:
    """Bytes of each video's shard files: its rows' tokens and crc32c values, and one index per
    shard; with stored views, each view's rows and shards (views.py)."""
    rows = stored_frames(source_frames, frame_stride)
    shards = -(-rows // frames_per_shard)
    return views * (rows * (frame_bytes(grid, dim, dtype) + CRC_BYTES) + shards * index_bytes(frames_per_shard))


def free_bytes(path: Path) -> int:
    """Free bytes on the file system where `path` is or would be made (its nearest existing
    parent); for a bucket, which tells no limit, BUCKET_FREE. Tests replace this function to
    play a small disk."""
    if not isinstance(path, Path):
        return BUCKET_FREE
    path = path.absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


BUCKET_FREE = 2**63 - 1  # "free space" of an object store: none is known, so everything fits


@dataclass(frozen=True)
class Option:
    frame_stride: int
    dtype: str
    frames: int  # stored frames of the whole dataset
    frame_bytes: int
    bytes: int  # tokens and shard indexes of every video
    to_write: int  # of the videos not done yet
    needed: int  # to_write and the fit check's slack
    frames_left: int = 0  # stored frames of the videos not done yet

    def flags(self) -> str:
        return " ".join(
            f
            for f in (
                f"--frame-stride {self.frame_stride}" if self.frame_stride != 1 else "",
                f"--dtype {self.dtype}" if self.dtype != "float16" else "",
            )
            if f
        )


@dataclass(frozen=True)
class SizePlan:
    out: Path
    model: str
    grid: tuple[int, int]
    dim: int
    videos: int
    source_frames: int
    chosen: Option
    options: tuple[Option, ...]  # PLAN_STRIDES x PLAN_DTYPES where extract stores the dtype
    free: int
    codec: str = "none"
    model_fps: float | None = None  # the image model alone, measured by `extract --dry-run`
    device: str = ""
    weights: str = ""  # why the weights a real run needs are not to be had here ("" when they are)
    views: int = 1  # views stored of every frame: the centre crop, augmented views, evaluation crops

    @property
    def fits(self) -> bool:
        return self.chosen.needed <= self.free

    def lines(self) -> list[str]:
        c = self.chosen
        h, w = self.grid
        out = [
            f"plan for {self.out}: {self.model} tokens {h}x{w}x{self.dim} {c.dtype}, frame stride "
            f"{c.frame_stride}"
            + (f", codec {self.codec} (bytes below are an upper bound)" if self.codec != "none" else ""),
            f"videos: {self.videos}; frames: {self.source_frames} in the videos, {c.frames} stored"
            + (f" ({self.views} views of each: the centre crop, --aug-views and --crops)" if self.views > 1 else ""),
            f"bytes per frame: {c.frame_bytes} ({h}x{w} tokens x {token_bytes(self.dim, c.dtype)} bytes)",
            f"bytes in all: {_size(c.bytes)} (tokens, a 4-byte crc32c a frame, shard indexes)"
            + (f"; {_size(c.to_write)} still to write" if c.to_write != c.bytes else ""),
            (
                "free where the store goes: a bucket tells no limit: "
                if self.free == BUCKET_FREE
                else f"free where the store goes: {_size(self.free)}: "
            )
            + ("fits" if self.fits else f"does NOT fit (needs {_size(c.needed)} with file-system slack)"),
            self._time_line(),
            *(
                [f"weights: NOT available here, so a real run would stop at once: {self.weights}"]
                if self.weights
                else []
            ),
            "options (frame stride, dtype: bytes in all):",
        ]
        for o in self.options:
            mark = "fits" if o.needed <= self.free else "does not fit"
            out.append(
                f"  stride {o.frame_stride} {o.dtype:>7}: {_size(o.bytes):>10} "
                f"({o.frame_bytes} bytes/frame; {mark}){'  <- chosen' if o == c else ''}"
            )
        return out

    def _time_line(self) -> str:
        if not self.model_fps:
            return "time: unknown (no rate measured; a run's summary reports its frames/s)"
        return (
            f"time: at least {_duration(self.chosen.frames_left / self.model_fps)}: the image model alone runs "
            f"{self.model_fps:.1f} frames/s on {self.device} (measured now, random weights of the same "
            "architecture); decoding runs beside it and can be slower"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def make_option(
    source_frames,
    done,
    frame_stride: int,
    dtype: str,
    grid: tuple[int, int],
    dim: int,
    frames_per_shard: int,
    views: int = 1,
) -> Option:
    per_video = video_bytes(source_frames, frame_stride, grid, dim, dtype, frames_per_shard, views)
    stored = stored_frames(source_frames, frame_stride)
    rows = stored * views  # every view's rows
    left = ~np.asarray(done, bool)
    shards_left = views * int((-(-stored[left] // frames_per_shard)).sum())
    to_write = int(per_video[left].sum())
    needed = to_write + BLOCK * (shards_left + 3 * int(left.sum())) + SLACK_FIXED
    return Option(
        frame_stride,
        dtype,
        int(rows.sum()),
        frame_bytes(grid, dim, dtype),
        int(per_video.sum()),
        to_write,
        needed,
        int(rows[left].sum()),
    )


def size_plan(
    out: Path,
    model: str,
    grid: tuple[int, int],
    dim: int,
    source_frames,
    done,
    frame_stride: int,
    dtype: str,
    frames_per_shard: int,
    codec: str = "none",
    views: int = 1,
) -> SizePlan:
    """The plan of `out`: `source_frames` per video (from the probe or the store's table);
    `done` marks the videos this image model already holds with these settings; `views` the
    views stored of every frame (the centre crop and those of `extract --aug-views/--crops`)."""
    grid = tuple(grid)
    source_frames = np.asarray(source_frames, np.int64)
    chosen = make_option(source_frames, done, frame_stride, dtype, grid, dim, frames_per_shard, views)
    nothing_done = np.zeros(len(source_frames), bool)
    options = tuple(
        chosen
        if (s, d) == (frame_stride, dtype)
        else make_option(source_frames, nothing_done, s, d, grid, dim, frames_per_shard, views)
        for s in PLAN_STRIDES
        for d in PLAN_DTYPES
        if d in TOKEN_BYTES
    )
    return SizePlan(
        out,
        model,
        grid,
        dim,
        len(source_frames),
        int(source_frames.sum()),
        chosen,
        options,
        free_bytes(out),
        codec,
        views=views,
    )


def check_fits(plan: SizePlan) -> None:
    """Refuse, before anything is written, a store that the disk cannot hold; name what would fit."""
    if plan.fits:
        return
    c = plan.chosen
    smaller = [o for o in plan.options if o.needed <= plan.free and o.flags()]
    where = f"an --out on a disk with {_size(c.needed)} free"
    fix = (
        f"these would fit: {'; '.join(f'{o.flags()} ({_size(o.bytes)})' for o in smaller)}; or {where}"
        if smaller
        else f"use {where}"
    )
    savings = ", ".join(o.flags() for o in plan.options if o.flags() and o not in smaller)
    raise StoreError(
        f"{plan.out} needs {_size(c.needed)} ({plan.model} {c.dtype}, frame stride {c.frame_stride}: "
        f"{c.frames} frames x {c.frame_bytes} bytes, shard indexes and file-system slack) but "
        f"{_size(plan.free)} is free there; nothing was written. {fix}"
        + (f" ({savings} would not fit either)" if savings and not smaller else "")
    )
