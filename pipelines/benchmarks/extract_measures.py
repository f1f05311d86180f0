"""The measurements the extraction benchmark (benchmarks/extract.py) makes of one image model: generated
videos of a frame budget, decoding alone, the model alone, and the token error of bf16 against
fp32.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np

from pipelines.common import clock

WIDTH, HEIGHT = 320, 240  # of the generated videos
VIDEO_FRAMES = (16, 32)  # frames per generated video: short, so a small budget spans several
GENERATED = 2048  # frames of video generated; larger sets repeat them under other names


# -- the video set ---------------------------------------------------------------------------
def make_videos(root: Path, frames: int, seed: int) -> list[tuple[Path, int]]:
    """Videos holding at least `frames` frames, interleaved by class, with their frame counts.
    At most GENERATED frames are generated; the rest are hard links to them under other names
    (decoding costs the same; generating is slow)."""
    from advise_cache.synthetic import generate_synthetic
    from advise_cache.video import probe_video

    per_class = math.ceil(1.2 * min(frames, GENERATED) / (sum(VIDEO_FRAMES) / 2) / 8)  # 8 classes, 20% margin
    generate_synthetic(
        root,
        family="both",
        seed=seed,
        train_per_class=per_class,
        test_per_class=0,
        min_frames=VIDEO_FRAMES[0],
        max_frames=VIDEO_FRAMES[1],
        width=WIDTH,
        height=HEIGHT,
    )
    paths = sorted(root.glob("train/*/*.mp4"), key=lambda p: (p.stem[-3:], p.parent.name))
    base = [(p, probe_video(p).frames) for p in paths]
    videos, total, copy = list(base), sum(n for _, n in base), 1
    while total < frames:
        for p, n in base:
            link = root / f"copy{copy}" / p.parent.name / p.name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, link)
            videos.append((link, n))
            total += n
        copy += 1
    return videos


def take(videos: list[tuple[Path, int]], frames: int) -> list[tuple[Path, int]]:
    """The first videos that together hold at least `frames` frames (all, if they hold fewer)."""
    return videos[: int(np.searchsorted(np.cumsum([n for _, n in videos]), frames)) + 1]


def write_manifest(path: Path, videos: list[tuple[Path, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([str(p), p.parent.name, "train"] for p, _ in videos)
    return path


# -- the measurements ------------------------------------------------------------------------
def time_decode(videos: list[tuple[Path, int]], spec, workers: int) -> tuple[float, list[np.ndarray]]:
    """Frames/s of the run's decode processes (or in line, for 0), counted from the first
    chunk handed over, and the crops of every video (resized out of the ring after the timing:
    the decode processes hand over frames as decoded, the model loop resizes them)."""
    import torch

    from advise_cache.extract_stages import InlineDecoder, PoolDecoder
    from advise_cache.pixels import resize_crop_tensor
    from advise_cache.video import FramePlan

    tasks = [(v, str(p), FramePlan(spec), n) for v, (p, n) in enumerate(videos)]
    clips = [None] * len(videos)
    decoder = InlineDecoder(tasks) if workers <= 0 else PoolDecoder(tasks, workers, spec.size)
    remaining, t0, counted = len(tasks), None, 0
    try:
        while remaining:
            event = decoder.next()
            if event[0] == "frames":
                _, v, start, frames, slot = event
                if clips[v] is None:
                    clips[v] = np.empty((videos[v][1], *frames.shape[1:]), np.uint8)
                clips[v][start : start + len(frames)] = frames
                decoder.release(slot)
                if t0 is None:
                    t0 = time.perf_counter()  # the first chunk is the start-up's
                else:
                    counted += len(frames)
            elif event[0] == "failed":
                raise RuntimeError(f"decoding a generated video failed: {event[2]}")
            else:
                remaining -= 1
        seconds = time.perf_counter() - t0
    finally:
        decoder.close()
    return counted / seconds, [resize_crop_tensor(torch.from_numpy(c), spec).contiguous().numpy() for c in clips]


def time_ifm(ifm, clips: list[np.ndarray], batch: int) -> float:
    """Frames/s of the model alone on the decoded crops in fixed batches across videos,
    tokens cast to float16 on the device; on CUDA from pinned memory, one sync at the end."""
    import torch

    crops = torch.from_numpy(np.concatenate(clips))
    cuda = ifm.device.type == "cuda"
    if cuda:
        crops = crops.pin_memory()
    batches = [crops[i : i + batch] for i in range(0, len(crops), batch)]
    ifm.encode(batches[0], dtype=torch.float16)  # first call: allocations, kernel choice
    t0 = clock(ifm.device)
    for b in batches:
        ifm.encode(b, dtype=torch.float16)
    return len(crops) / (clock(ifm.device) - t0)


def token_error(model: str, ifm_fp32, clips: list[np.ndarray], frames: int, seed: int) -> list:
    """bf16 autocast tokens against fp32 tokens of the same model and crops: a table row."""
    import torch

    from advise_cache.ifm import create_ifm

    keep = int(np.searchsorted(np.cumsum([len(c) for c in clips]), frames)) + 1
    x = np.concatenate(clips[:keep])[:frames]
    bf16 = create_ifm(model, "none", str(ifm_fp32.device), "bf16", seed)
    if bf16.weights_sha256 != ifm_fp32.weights_sha256:
        raise RuntimeError("the bf16 and fp32 models do not have the same weights")
    a, b = (
        torch.cat([m.encode(x[i : i + 64]).double().cpu() for i in range(0, len(x), 64)]).flatten(0, 2)
        for m in (ifm_fp32, bf16)
    )
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)  # per token
    return [
        model,
        len(x),
        f"{float((a - b).norm() / a.norm()):.2e}",
        f"{float(cos.mean()):.6f}",
        f"{float(cos.min()):.6f}",
        f"{float((a - b).abs().max()):.3g}",
    ]


def stored_tokens(ifm, clips: list[np.ndarray], frames: int) -> list[np.ndarray]:
    """Float16 tokens, as stored, of the first videos' crops: enough videos for `frames` frames."""
    import torch

    tokens, total = [], 0
    for clip in clips:
        if total >= frames:
            break
        batches = (ifm.encode(clip[i : i + 64], dtype=torch.float16).cpu().numpy() for i in range(0, len(clip), 64))
        tokens.append(np.concatenate(list(batches)))
        total += len(clip)
    return tokens
