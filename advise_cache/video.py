"""Decoding video frames and the image model's pixel preprocessing.

The only module that imports decord. Frames are decoded at their native size, resized so
the short side equals the model's input size, and centre-cropped — the same geometry as
open_clip's and timm's evaluation transforms. Resizing uses PIL's antialiased
filters, as open_clip's and timm's own transforms do. The crop stays uint8 (so it travels
cheaply between processes); `normalize` turns it into the model's input on its device.

Decode workers import only this module (no torch), so they start in well under a second.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .dataset_files import VIDEO_EXTENSIONS
from .errors import DecodeError, first_line

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Decode this many frames at a time so a long video never sits in memory at full size.
_DECODE_BATCH = 64


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float


@dataclass(frozen=True)
class PixelSpec:
    """How a model wants its pixels: square input size, interpolation, mean and std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


def _reader(path: Path):
    import decord  # imported here so processes that never decode stay light

    decord.logging.set_level(decord.logging.QUIET)
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DecodeError(f"{path}: a link to {os.readlink(path)}, which does not exist")
    if path.is_dir():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            raise DecodeError(f"{path}: a folder named like a video file, not a video")
        raise DecodeError(f"{path}: a folder that cannot be read ({_access_error(path)}); its videos are not extracted")
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), num_threads=1)
    except Exception as e:  # decord raises RuntimeError or its own DECORDError
        if "cannot find video stream" in str(e):
            raise DecodeError(f"{path}: no decodable video stream (audio only, or a codec the decoder lacks)") from e
        raise DecodeError(f"{path}: cannot open as video ({first_line(e, 200)})") from e


def _decoding(path: Path, what: str, fn):
    """`fn()`, with any error of the decoder (decord raises its own DECORDError, or
    RuntimeError) turned into this video's DecodeError: one bad file never stops a run."""
    try:
        return fn()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"{path}: {what} ({first_line(e, 200)})") from e


def _access_error(folder: Path) -> str:
    try:
        os.listdir(folder)
    except OSError as e:
        return e.strerror or type(e).__name__
    return "it became readable since it was listed: run again"


def probe_video(path: Path) -> VideoInfo:
    """Frame count and rate from the decoder's own index (what `decode_frames` will return)."""
    vr = _reader(path)
    n = _decoding(path, "cannot read its frame index", lambda: len(vr))
    if n == 0:
        raise DecodeError(f"{path}: no decodable frame")
    # A video whose first frame does not decode fails here, before any model runs.
    _decoding(path, "decoding failed at frame 0", lambda: vr[0])
    fps = _decoding(path, "cannot read its frame rate", lambda: float(vr.get_avg_fps() or 0.0))
    return VideoInfo(frames=n, fps=fps)


def decode_frames(path: Path, spec: PixelSpec, stride: int = 1) -> np.ndarray:
    """Every `stride`-th frame, resized and centre-cropped to (T, S, S, 3) uint8."""
    return np.concatenate([crops for _, crops in iter_crops(path, spec, stride)])


def iter_crops(
    path: Path, spec: PixelSpec, stride: int = 1, expected: int | None = None, chunk: int = _DECODE_BATCH, out=None
):
    """Decode a video `chunk` frames at a time: yields (first row, (n, S, S, 3) uint8 crops).
    `out()`, when given, returns the buffer each chunk's crops are written into (a slot of
    shared memory). `expected` rows, when given, are checked before anything is decoded."""
    vr = _reader(path)
    indices = list(range(0, _decoding(path, "cannot read its frame index", lambda: len(vr)), stride))
    if not indices:
        raise DecodeError(f"{path}: no decodable frame")
    if expected is not None and len(indices) != expected:
        raise DecodeError(f"{path}: decoder sees {len(indices)} frames, the store expects {expected}")
    for start in range(0, len(indices), chunk):
        batch = indices[start : start + chunk]
        frames = _decoding(
            path, f"decoding failed at frames {batch[0]}-{batch[-1]}", lambda batch=batch: vr.get_batch(batch).asnumpy()
        )
        yield start, resize_crop(frames, spec, None if out is None else out()[: len(batch)])


def resize_crop(frames: np.ndarray, spec: PixelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 → short side resized to spec.size, centre crop, (T, S, S, 3) uint8
    (into `out` when given)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DecodeError(f"expected RGB frames (T, H, W, 3), got shape {frames.shape}")
    _, h, w, _ = frames.shape
    s = spec.size
    scale = s / min(h, w)
    nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
    top, left = (nh - s) // 2, (nw - s) // 2
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


def normalize(frames: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
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


# -- entry points for decode worker processes: failures come back as a reason string --------
def init_worker() -> None:
    """Set up a decode or probe process: quiet, deaf to Ctrl-C, and dying with its parent."""
    # decord's bundled ffmpeg prints to fd 2; the reason is kept in the store instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    # Ctrl-C reaches the whole process group; the parent alone handles it and ends its workers.
    # A worker interrupted inside a pool's queue can leave the parent waiting on it for good.
    # The parent started us with SIGINT blocked (`sigint_blocked`), so one sent before this
    # point is pending: ignoring it discards it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent()


@contextlib.contextmanager
def sigint_blocked():
    """Start worker processes inside this. They inherit SIGINT blocked, so a Ctrl-C while they
    boot does not kill them mid-import; and here a Ctrl-C (which any thread may receive) is
    only noted until every process is launched, then raised as KeyboardInterrupt, so no
    launch is cut off half-way."""
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    noted = []
    previous = signal.signal(signal.SIGINT, lambda *_: noted.append(True))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending one is noted now
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if noted and previous is not signal.SIG_IGN:
            raise KeyboardInterrupt


def _die_with_parent() -> None:
    """Have the kernel kill this process when the one that started it dies (Linux), however
    it dies: a killed extraction leaves no decode process behind."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(0)


def probe_or_reason(path: str) -> tuple[int, float, str]:
    try:
        info = probe_video(Path(path))
        return info.frames, info.fps, ""
    except DecodeError as e:
        return 0, 0.0, str(e)


def decode_or_reason(path: str, spec: PixelSpec, stride: int) -> np.ndarray | str:
    try:
        return decode_frames(Path(path), spec, stride)
    except DecodeError as e:
        return str(e)


def decode_worker(tasks, results, free, shm_name: str, shape: tuple[int, ...]) -> None:
    """A decode process: takes (video, path, spec, stride, expected) tasks until None, writes
    each chunk of crops into a free slot of the shared ring `shm_name` (slots, chunk, S, S, 3)
    and reports ("frames", video, first row, n, slot), then ("done", video) or
    ("failed", video, reason). Crops never travel through a pipe: only slot numbers do."""
    import queue
    from multiprocessing import shared_memory

    init_worker()
    parent = os.getppid()

    def get(q):
        while True:  # a parent killed outright (SIGKILL) must not leave us waiting forever
            try:
                return q.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    raise SystemExit(0) from None

    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        ring = np.ndarray(shape, np.uint8, buffer=shm.buf)
        while (task := get(tasks)) is not None:
            video, path, spec, stride, expected = task
            slot = -1

            def take():
                nonlocal slot
                slot = get(free)
                return ring[slot]

            try:
                for start, crops in iter_crops(Path(path), spec, stride, expected, shape[1], take):
                    results.put(("frames", video, start, len(crops), slot))
                    slot = -1  # the parent owns it now
                results.put(("done", video))
            except DecodeError as e:
                if slot >= 0:
                    free.put(slot)  # a slot taken for a chunk that failed goes back
                results.put(("failed", video, str(e)))
            except Exception as e:  # a bug, not a bad file: the parent stops the run
                results.put(("error", video, f"{type(e).__name__}: {first_line(e)}"))
                return
        ring = None  # the view must go before the segment can close
    finally:
        shm.close()
