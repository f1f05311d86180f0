"""Decoding videos into frames for the image model.

The only module that imports a decoder: decord (the default) or torchcodec (`--decoder
torchcodec`, PyTorch's own, an optional extra: `pip install advise-cache[torchcodec]` and the
system's FFmpeg libraries). Both go through `open_video`, and any error of either is that
video's `DecodeError`: one bad file never stops a run.

Frames are decoded at their native size, a chunk at a time, and then either resized and
centre-cropped here with PIL (`--resize pil`, open_clip's own preprocessing byte for byte) or
handed over as decoded, at most `pixels.max_pixels` (`--resize tensor`, the default): the model
loop resizes them as tensor ops where the model runs (pixels.py).

Decode workers import only this module and pixels.py (no torch), so they start in well under a
second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset_files import VIDEO_EXTENSIONS
from .errors import DecodeError, first_line
from .pixels import PixelSpec, cap_factor, reduce, resize_crop

log = logging.getLogger(__name__)

DECODERS = ("decord", "torchcodec")
# Decode this many frames at a time so a long video never sits in memory at full size.
_DECODE_BATCH = 16


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float


@dataclass(frozen=True)
class FramePlan:
    """What a decode process makes of a video: every `stride`-th frame, with `decoder`, resized
    to the model's crops here (`resize` "pil") or handed over as decoded ("tensor")."""

    spec: PixelSpec
    stride: int = 1
    resize: str = "tensor"
    decoder: str = "decord"


class _Decord:
    def __init__(self, path: Path):
        import decord  # imported here so processes that never decode stay light

        decord.logging.set_level(decord.logging.QUIET)
        self.vr = decord.VideoReader(str(path), num_threads=1)

    def __len__(self) -> int:
        return len(self.vr)

    def fps(self) -> float:
        return float(self.vr.get_avg_fps() or 0.0)

    def frames(self, indices: list[int]) -> np.ndarray:
        return self.vr.get_batch(indices).asnumpy()


class _TorchCodec:
    def __init__(self, path: Path):
        from torchcodec.decoders import VideoDecoder

        # exact: the index comes from a scan of the file, as decord's does, not from its header
        self.dec = VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1)

    def __len__(self) -> int:
        return len(self.dec)

    def fps(self) -> float:
        return float(self.dec.metadata.average_fps or 0.0)

    def frames(self, indices: list[int]) -> np.ndarray:
        return self.dec.get_frames_at(indices).data.numpy()


_BACKENDS = {"decord": _Decord, "torchcodec": _TorchCodec}


def decoder_available(decoder: str) -> str:
    """'' when `decoder` can be used here, else why not (one line)."""
    if decoder not in _BACKENDS:
        return f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}"
    try:
        if decoder == "torchcodec":
            from torchcodec.decoders import VideoDecoder  # noqa: F401 - loads its FFmpeg libraries
        else:
            import decord  # noqa: F401
    except Exception as e:  # ImportError, or OSError/RuntimeError when FFmpeg's libraries are missing
        return (
            f"--decoder {decoder} cannot be loaded here ({first_line(e, 160)}); install it with "
            f"`pip install 'advise-cache[{decoder}]'`"
            + (" and the system's FFmpeg libraries" if decoder == "torchcodec" else "")
        )
    return ""


def open_video(path: Path, decoder: str = "decord"):
    """A reader of `path` (len, fps(), frames(indices) -> (n, H, W, 3) uint8), or DecodeError."""
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
        return _BACKENDS[decoder](path)
    except Exception as e:  # decord: RuntimeError or DECORDError; torchcodec: RuntimeError, ValueError
        text = str(e)
        if any(m in text for m in _NO_VIDEO_STREAM):
            raise DecodeError(f"{path}: no decodable video stream (audio only, or a codec the decoder lacks)") from e
        raise DecodeError(f"{path}: cannot open as video ({_reason(e)})") from e


# What each decoder says of a file with no video stream it can decode (decord; torchcodec).
_NO_VIDEO_STREAM = ("cannot find video stream", "best video stream is unknown")


def _reason(e: Exception) -> str:
    """The decoder's message, one line, without torchcodec's 'Function, /source/file.cpp:N, '."""
    return re.sub(r"^\w+, \S+:\d+, ", "", first_line(e, 300))[:200]


def _decoding(path: Path, what: str, fn):
    """`fn()`, with any error of the decoder turned into this video's DecodeError."""
    try:
        return fn()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"{path}: {what} ({_reason(e)})") from e


def _access_error(folder: Path) -> str:
    try:
        os.listdir(folder)
    except OSError as e:
        return e.strerror or type(e).__name__
    return "it became readable since it was listed: run again"


def probe_video(path: Path, decoder: str = "decord") -> VideoInfo:
    """Frame count and rate from the decoder's own index (what `iter_frames` will return)."""
    vr = open_video(path, decoder)
    n = _decoding(path, "cannot read its frame index", lambda: len(vr))
    if n == 0:
        raise DecodeError(f"{path}: no decodable frame")
    # A video whose first frame does not decode fails here, before any model runs.
    _decoding(path, "decoding failed at frame 0", lambda: vr.frames([0]))
    fps = _decoding(path, "cannot read its frame rate", vr.fps)
    return VideoInfo(frames=n, fps=fps)


def decode_frames(path: Path, spec: PixelSpec, stride: int = 1, resize: str = "tensor", decoder: str = "decord"):
    """Every `stride`-th frame as the model's (T, S, S, 3) uint8 crops, made as extraction makes
    them on the CPU (`resize`): for tests, figures and checks, a whole video at once."""
    from .pixels import resize_crop_tensor

    plan = FramePlan(spec, stride, resize, decoder)
    chunks = []
    for _, frames in iter_frames(Path(path), plan):
        if resize == "tensor":
            import torch

            frames = resize_crop_tensor(torch.from_numpy(frames), spec).numpy()
        chunks.append(frames)
    return np.concatenate(chunks)


def iter_frames(path: Path, plan: FramePlan, expected: int | None = None, room: int | None = None, out=None):
    """Decode a video a chunk at a time: yields (first row, (n, h, w, 3) uint8), the model's
    crops (resize "pil") or the frames as decoded, reduced to at most max_pixels ("tensor").
    `room`: the most bytes one yield may hold (a shared-memory slot); `out(n)`, when given,
    returns the buffer for the next n frames' bytes. `expected` rows, when given, are checked
    before anything is decoded."""
    vr = open_video(path, plan.decoder)
    indices = list(range(0, _decoding(path, "cannot read its frame index", lambda: len(vr)), plan.stride))
    if not indices:
        raise DecodeError(f"{path}: no decodable frame")
    if expected is not None and len(indices) != expected:
        raise DecodeError(f"{path}: decoder sees {len(indices)} frames, the store expects {expected}")
    s = plan.spec.size
    for start in range(0, len(indices), _DECODE_BATCH):
        batch = indices[start : start + _DECODE_BATCH]
        frames = _decoding(path, f"decoding failed at frames {batch[0]}-{batch[-1]}", lambda b=batch: vr.frames(b))
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise DecodeError(f"{path}: expected RGB frames (T, H, W, 3), got shape {frames.shape}")
        if plan.resize == "tensor":
            frames = reduce(frames, cap_factor(frames.shape[1], frames.shape[2], s))
        one = (s * s * 3) if plan.resize == "pil" else frames[0].nbytes
        step = len(frames) if room is None else max(1, room // one)
        for i in range(0, len(frames), step):
            piece = frames[i : i + step]
            if plan.resize == "pil":
                n = len(piece)
                dest = None if out is None else out(n * one).reshape(n, s, s, 3)
                yield start + i, resize_crop(piece, plan.spec, dest)
            elif out is None:
                yield start + i, piece
            else:
                dest = out(piece.nbytes).reshape(piece.shape)
                dest[:] = piece
                yield start + i, dest


# -- entry points for decode worker processes: failures come back as a reason string --------
def init_worker() -> None:
    """Set up a decode or probe process: quiet, deaf to Ctrl-C, and dying with its parent."""
    # decord's bundled ffmpeg prints to fd 2; the reason is kept in the store instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    deaf_to_ctrl_c()


def deaf_to_ctrl_c() -> None:
    """Make this worker process ignore Ctrl-C and die with the process that started it."""
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


def probe_or_reason(path: str, decoder: str = "decord") -> tuple[int, float, str]:
    try:
        info = probe_video(Path(path), decoder)
        return info.frames, info.fps, ""
    except DecodeError as e:
        return 0, 0.0, str(e)


def decode_worker(tasks, results, free, shm_name: str, shape: tuple[int, int]) -> None:
    """A decode process: takes (video, path, FramePlan, expected) tasks until None, writes each
    chunk of frames into a free slot of the shared ring `shm_name` ((slots, bytes) uint8) and
    reports ("frames", video, first row, (n, h, w, 3), slot), then ("done", video) or
    ("failed", video, reason). Frames never travel through a pipe: only slot numbers do."""
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
            video, path, plan, expected = task
            slot = -1

            def take(nbytes: int) -> np.ndarray:
                nonlocal slot
                slot = get(free)
                return ring[slot, :nbytes]

            try:
                for start, frames in iter_frames(Path(path), plan, expected, shape[1], take):
                    results.put(("frames", video, start, frames.shape, slot))
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
