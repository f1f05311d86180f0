"""Clip index generation: which stored frames of a video make up one clip.

    from advise_cache.sampling import SamplerConfig, prp_epoch
    plan = prp_epoch(videos, lengths, SamplerConfig(), seed=0, epoch=3, rank=0, world=2)
    # plan[i].video, plan[i].indices (int64, frames), plan[i].label

Indices are positions 0..n-1 among one video's stored frames; this module knows nothing of
the store or of models, so a "stride" here is counted in stored frames. Every function takes
an explicit `np.random.Generator` (or a seed) so that a run is reproducible, and the epoch
plans draw every clip from one generator per (seed, epoch) in video order before shuffling:
the plan is the same whatever the number of ranks, and each rank reads a disjoint slice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from advise_cache.errors import AdviseCacheError

log = logging.getLogger(__name__)

# "jitter" is the released code's fine-tuning clip (its `action_recog` task): a rate-1 PRP clip,
# start anywhere and wrapping, span jittered, `clips_per_video` of them per video.
CLASSIFICATION_MODES = ("stride", "segment", "jitter")
# Where a PRP clip may start in a video of n frames: "any" frame (the clip wraps past the end), or
# "code", the released code's [0, n - frames * stride] (its `tmodeling` task), which draws no clip
# from a video shorter than frames * stride (`long_enough` leaves those out of an epoch).
CLIP_STARTS = ("any", "code")
# Which clips share a batch: each clip on its own ("shuffled"), or a video's clips together
# ("by-video"), as the released code batches 8 videos of 4 clips.
CLIP_ORDERS = ("shuffled", "by-video")


@dataclass(frozen=True)
class SamplerConfig:
    frames: int = 8  # frames per clip
    stride: int = 2  # base stride, in stored frames
    rates: tuple[int, ...] = (1, 2, 4, 8)  # PRP playback rates; a negative rate plays backwards
    jitter: float = 0.2  # speed jitter: the span is scaled by 1 + U(-jitter, +jitter)
    clips_per_video: int = 4  # PRP clips per video per epoch (and "jitter" fine-tuning clips)
    clip_start: str = "any"  # one of CLIP_STARTS
    clip_order: str = "shuffled"  # one of CLIP_ORDERS

    def __post_init__(self) -> None:
        _check_clip(self.frames, self.stride)
        if self.clip_start not in CLIP_STARTS:
            raise AdviseCacheError(f"--clip-start must be one of {', '.join(CLIP_STARTS)}, got {self.clip_start!r}")
        if self.clip_order not in CLIP_ORDERS:
            raise AdviseCacheError(f"--clip-order must be one of {', '.join(CLIP_ORDERS)}, got {self.clip_order!r}")
        rates = tuple(int(r) for r in self.rates)
        if not rates:
            raise AdviseCacheError("PRP needs at least one playback rate")
        if any(r == 0 for r in rates) or rates != tuple(self.rates):
            raise AdviseCacheError(f"PRP rates must be non-zero integers, got {self.rates}")
        if not 0.0 <= self.jitter < 1.0:
            raise AdviseCacheError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.clips_per_video < 1:
            raise AdviseCacheError(f"clips_per_video must be >= 1, got {self.clips_per_video}")
        object.__setattr__(self, "rates", rates)  # a list from a CLI or JSON becomes a tuple


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare fields explicitly
class ClipRequest:
    video: int  # index into the store's video table
    indices: np.ndarray  # int64 (frames,)
    label: int  # PRP rate index, or the class label for classification
    view: int = 0  # the stored view its frames are read from (views.py); 0, the centre crop


def draw_views(plan: list[ClipRequest], pool: list[int], seed: int, epoch: int, rank: int = 0) -> list[ClipRequest]:
    """`plan` with each clip's view drawn uniformly from `pool` (stored view indices), the same
    for all its frames: its own generator per (seed, epoch, rank), so the clips themselves are
    drawn as without views, and a clip's view changes from epoch to epoch."""
    if len(pool) < 2:
        return plan if not pool or pool[0] == 0 else [replace(r, view=pool[0]) for r in plan]
    rng = np.random.default_rng([seed, epoch, rank, 21])
    picks = np.asarray(pool, np.int64)[rng.integers(0, len(pool), len(plan))]
    return [replace(r, view=int(k)) for r, k in zip(plan, picks.tolist())]


def _check_clip(frames: int, stride: int) -> None:
    if frames < 1:
        raise AdviseCacheError(f"a clip needs frames >= 1, got {frames}")
    if stride < 1:
        raise AdviseCacheError(f"stride must be >= 1, got {stride}")


def _check_n(n: int) -> None:
    if n < 1:
        raise AdviseCacheError(f"cannot sample a clip from a video of {n} frames")


def sample_prp_clip(rng: np.random.Generator, n: int, cfg: SamplerConfig) -> tuple[np.ndarray, int]:
    """One PRP clip of a video of `n` frames: (int64 indices of length cfg.frames, rate index).

    Draw order, always all three, one call each (tests and reproductions rely on it):
      1. label = rng.integers(len(cfg.rates))          -> r = cfg.rates[label]
      2. j = rng.uniform(-cfg.jitter, cfg.jitter)      (drawn even when jitter is 0)
      3. start = rng.integers(n), or with clip_start "code" rng.integers(max(n - frames * stride, 0) + 1)
    The clip covers span = frames * stride * |r| * (1 + j) frames:
    idx_k = (start + floor(k * span / frames)) mod n for k = 0..frames-1, so a video shorter
    than the span wraps around; for r < 0 the clip is reversed (descending k).
    """
    _check_n(n)
    label = int(rng.integers(len(cfg.rates)))
    j = float(rng.uniform(-cfg.jitter, cfg.jitter))
    starts = n if cfg.clip_start == "any" else max(n - cfg.frames * cfg.stride, 0) + 1
    start = int(rng.integers(starts))
    rate = cfg.rates[label]
    span = cfg.frames * cfg.stride * abs(rate) * (1.0 + j)
    offsets = np.floor(np.arange(cfg.frames) * span / cfg.frames).astype(np.int64)
    indices = (start + offsets) % n
    if rate < 0:
        indices = indices[::-1].copy()
    return indices, label


def _valid_start_range(n: int, frames: int, stride: int) -> int:
    # Largest start whose clip does not wrap (conservatively one stride short of the end);
    # 0 for a video shorter than the clip, which then wraps.
    return max(n - frames * stride, 0)


def sample_fixed_stride_clip(rng: np.random.Generator, n: int, frames: int = 8, stride: int = 2) -> np.ndarray:
    """`frames` indices `stride` apart from a random start, modulo n.

    The start is uniform in [0, max(n - frames * stride, 0)] (one `rng.integers` draw), the
    same range `multi_view_clips` spreads its test views over: a long video never wraps,
    since a jump from its end back to its start would be a fake cut; a short one does.
    """
    _check_n(n)
    _check_clip(frames, stride)
    start = int(rng.integers(_valid_start_range(n, frames, stride) + 1))
    return (start + stride * np.arange(frames, dtype=np.int64)) % n


def _segments(n: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    # Segment k is [floor(k n / frames), floor((k+1) n / frames)); for n < frames some are
    # empty and are given length 1 at their start, which repeats a frame but stays in range.
    edges = (np.arange(frames + 1, dtype=np.int64) * n) // frames
    starts = edges[:-1]
    lengths = np.maximum(edges[1:] - starts, 1)
    return starts, lengths


def sample_segment_clip(rng: np.random.Generator, n: int, frames: int = 8, jitter: bool = True) -> np.ndarray:
    """One index per equal segment of [0, n): a uniform frame inside each (one vectorised
    `rng.integers` draw of size `frames`) or, with jitter=False, the segment's middle
    (start + length // 2, no draw). Indices are non-decreasing; for n < frames frames repeat.
    """
    _check_n(n)
    _check_clip(frames, 1)
    starts, lengths = _segments(n, frames)
    if jitter:
        return starts + rng.integers(0, lengths, dtype=np.int64)
    return starts + lengths // 2


def multi_view_clips(n: int, frames: int = 8, stride: int = 2, views: int = 1, mode: str = "stride") -> np.ndarray:
    """Deterministic test views of a video of n frames, shape (views, frames), int64.

    "stride" (and "jitter"): clips of `frames` indices `stride` apart whose starts are evenly
    spaced over [0, max(n - frames * stride, 0)] (rounded; a single view takes the centre), modulo n.
    "segment": in each equal segment, the frame at fraction (v + 0.5) / views of its length,
    so one view is the segment middle (the same as `sample_segment_clip(jitter=False)`).
    """
    _check_n(n)
    _check_clip(frames, stride)
    if views < 1:
        raise AdviseCacheError(f"views must be >= 1, got {views}")
    if mode in ("stride", "jitter"):  # the released code tests its "jitter" clips' models so
        hi = _valid_start_range(n, frames, stride)
        if views == 1:
            starts = np.array([hi // 2], dtype=np.int64)
        else:
            starts = np.rint(np.linspace(0, hi, views)).astype(np.int64)
        return (starts[:, None] + stride * np.arange(frames, dtype=np.int64)) % n
    if mode == "segment":
        seg_starts, lengths = _segments(n, frames)
        fractions = (np.arange(views) + 0.5) / views
        offsets = np.floor(fractions[:, None] * lengths[None, :]).astype(np.int64)
        return seg_starts[None, :] + offsets
    raise AdviseCacheError(f"unknown view mode {mode!r}; choose one of {CLASSIFICATION_MODES}")


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    if seed < 0 or epoch < 0:
        raise AdviseCacheError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch])


def _check_videos(videos: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    videos = np.asarray(videos, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if len(videos) != len(lengths):
        raise AdviseCacheError(f"{len(videos)} videos but {len(lengths)} lengths")
    if len(videos) == 0:
        raise AdviseCacheError("no videos to sample clips from")
    if (lengths < 1).any():
        bad = videos[lengths < 1][:5].tolist()
        raise AdviseCacheError(f"videos with no frames cannot be sampled: {bad}")
    return videos, lengths


def _shard(groups: list[list[ClipRequest]], rng: np.random.Generator, rank: int, world: int) -> list[ClipRequest]:
    """Shuffle the groups (a clip each, or a video's clips), drop the last len % world so every
    rank gets as many, take [rank::world], and flatten them in that order.

    Equal counts keep DDP ranks in step (no rank waits on a batch another never makes); the
    dropped groups change every epoch with the shuffle, so no video is left out for good.
    """
    if world < 1 or not 0 <= rank < world:
        raise AdviseCacheError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    if len(groups) < world:
        raise AdviseCacheError(f"{len(groups)} clips (or videos) cannot be shared among {world} ranks")
    order = rng.permutation(len(groups))
    keep = len(groups) - len(groups) % world
    if keep < len(groups):
        log.debug("dropping %d of %d clip groups to split them over %d ranks", len(groups) - keep, len(groups), world)
    return [clip for i in order[:keep][rank::world] for clip in groups[i]]


def _grouped(per_video: list[list[ClipRequest]], order: str) -> list[list[ClipRequest]]:
    return per_video if order == "by-video" else [[clip] for clips in per_video for clip in clips]


def long_enough(videos: np.ndarray, lengths: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """The videos PRP samples: all, or with clip_start "code" those of at least frames * stride
    frames (the released code replaces a shorter video by another random one, so it never
    trains on it either); a warning says how many were left out."""
    span = cfg.frames * cfg.stride
    keep = np.asarray(lengths) >= span
    if cfg.clip_start == "any" or keep.all():
        return videos
    if not keep.any():
        raise AdviseCacheError(f"--clip-start code: every video is shorter than a clip's {span} frames")
    log.warning("--clip-start code: leaving out %d of %d videos shorter than %d frames", (~keep).sum(), len(keep), span)
    return videos[keep]


def prp_epoch(
    videos: np.ndarray,
    lengths: np.ndarray,
    cfg: SamplerConfig,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
) -> list[ClipRequest]:
    """This rank's PRP clips for one epoch: cfg.clips_per_video per video, shuffled.

    One generator, seeded from (seed, epoch), draws every clip in video order (each with
    `sample_prp_clip`'s draw order), then the shuffle; the plan therefore does not depend on
    rank or world, and the union of the ranks' slices is the world=1 plan truncated to a
    multiple of world (see `_shard`).
    """
    videos, lengths = _check_videos(videos, lengths)
    rng = _epoch_rng(seed, epoch)
    per_video = []
    for video, n in zip(videos.tolist(), lengths.tolist()):
        clips = [ClipRequest(video, *sample_prp_clip(rng, n, cfg)) for _ in range(cfg.clips_per_video)]
        per_video.append(clips)
    return _shard(_grouped(per_video, cfg.clip_order), rng, rank, world)


def classification_epoch(
    videos: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    seed: int,
    epoch: int,
    frames: int = 8,
    stride: int = 2,
    mode: str = "stride",
    rank: int = 0,
    world: int = 1,
    sampler: SamplerConfig | None = None,
) -> list[ClipRequest]:
    """This rank's classification clips for one epoch, labelled with their video's class.

    mode "stride" (one clip per video) uses `sample_fixed_stride_clip`, "segment" (one)
    `sample_segment_clip` (jittered), "jitter" `sampler.clips_per_video` rate-1 PRP clips
    (`sample_prp_clip` with `sampler`'s jitter, starting anywhere; grouped by `sampler.clip_order`);
    generator, shuffle and rank slicing as in `prp_epoch`.
    """
    videos, lengths = _check_videos(videos, lengths)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(videos):
        raise AdviseCacheError(f"{len(videos)} videos but {len(labels)} labels")
    if mode not in CLASSIFICATION_MODES:
        raise AdviseCacheError(f"unknown clip mode {mode!r}; choose one of {CLASSIFICATION_MODES}")
    _check_clip(frames, stride)
    sampler = sampler or SamplerConfig()
    one = replace(sampler, frames=frames, stride=stride, rates=(1,), clip_start="any")
    rng = _epoch_rng(seed, epoch)
    per_video = []
    for video, n, label in zip(videos.tolist(), lengths.tolist(), labels.tolist()):
        if mode == "jitter":
            per_video.append(
                [ClipRequest(video, sample_prp_clip(rng, n, one)[0], label) for _ in range(one.clips_per_video)]
            )
        elif mode == "stride":
            per_video.append([ClipRequest(video, sample_fixed_stride_clip(rng, n, frames, stride), label)])
        else:
            per_video.append([ClipRequest(video, sample_segment_clip(rng, n, frames, jitter=True), label)])
    return _shard(_grouped(per_video, sampler.clip_order), rng, rank, world)
