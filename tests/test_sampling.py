"""Clip samplers: hand-reproduced draws, index bounds, and epoch plans across ranks."""

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from advise_cache.errors import AdviseCacheError
from advise_cache.sampling import (
    ClipRequest,
    SamplerConfig,
    classification_epoch,
    long_enough,
    multi_view_clips,
    prp_epoch,
    sample_fixed_stride_clip,
    sample_prp_clip,
    sample_segment_clip,
)


def expected_prp(seed: int, n: int, cfg: SamplerConfig) -> tuple[list[int], int]:
    """The PRP clip rebuilt by hand from the documented draw order: label, jitter, start."""
    rng = np.random.default_rng(seed)
    label = int(rng.integers(len(cfg.rates)))
    j = float(rng.uniform(-cfg.jitter, cfg.jitter))
    start = int(rng.integers(n))
    r = cfg.rates[label]
    span = cfg.frames * cfg.stride * abs(r) * (1 + j)
    idx = [(start + math.floor(k * span / cfg.frames)) % n for k in range(cfg.frames)]
    return (idx[::-1] if r < 0 else idx), label


def as_tuples(plan: list[ClipRequest]) -> list[tuple[int, tuple[int, ...], int]]:
    return [(c.video, tuple(c.indices.tolist()), c.label) for c in plan]


# --- PRP clips ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_prp_clip_matches_hand_computation(seed):
    cfg = SamplerConfig(frames=8, stride=2, rates=(4,), jitter=0.2)
    indices, label = sample_prp_clip(np.random.default_rng(seed), 100, cfg)
    want, want_label = expected_prp(seed, 100, cfg)
    assert label == want_label == 0
    assert indices.dtype == np.int64 and indices.shape == (8,)
    assert indices.tolist() == want


def test_prp_clip_known_values():
    # n=100, frames 8, stride 2, rate 4, jitter 0: spacing exactly 8 from the drawn start.
    cfg = SamplerConfig(rates=(4,), jitter=0.0)
    rng = np.random.default_rng(7)
    label, _, start = rng.integers(1), rng.uniform(0, 0), int(rng.integers(100))
    indices, got_label = sample_prp_clip(np.random.default_rng(7), 100, cfg)
    assert got_label == label == 0
    assert indices.tolist() == [(start + 8 * k) % 100 for k in range(8)]


@pytest.mark.parametrize("seed", range(5))
def test_prp_clip_wraps_around_short_video(seed):
    cfg = SamplerConfig(rates=(8,), jitter=0.2)
    indices, _ = sample_prp_clip(np.random.default_rng(seed), 10, cfg)
    want, _ = expected_prp(seed, 10, cfg)
    assert indices.tolist() == want
    assert indices.min() >= 0 and indices.max() < 10


def test_prp_clip_wraps_with_exact_values():
    # jitter 0, rate 8, stride 2: offsets 0, 16, ..., 112, taken modulo 10.
    cfg = SamplerConfig(rates=(8,), jitter=0.0)
    rng = np.random.default_rng(3)
    rng.integers(1), rng.uniform(0, 0)
    start = int(rng.integers(10))
    indices, _ = sample_prp_clip(np.random.default_rng(3), 10, cfg)
    assert indices.tolist() == [(start + 16 * k) % 10 for k in range(8)]


@pytest.mark.parametrize("seed", range(5))
def test_negative_rate_reverses_forward_clip(seed):
    forward, _ = sample_prp_clip(np.random.default_rng(seed), 50, SamplerConfig(rates=(4,)))
    backward, label = sample_prp_clip(np.random.default_rng(seed), 50, SamplerConfig(rates=(-4,)))
    assert label == 0
    assert backward.tolist() == forward[::-1].tolist()
    assert expected_prp(seed, 50, SamplerConfig(rates=(-4,)))[0] == backward.tolist()


@pytest.mark.parametrize("rate", [1, 2, 4, 8])
def test_zero_jitter_gives_exact_spacing(rate):
    cfg = SamplerConfig(rates=(rate,), jitter=0.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        indices, _ = sample_prp_clip(rng, 10_000, cfg)
        assert set((np.diff(indices) % 10_000).tolist()) == {2 * rate}


def test_spacing_within_jitter_and_labels_uniform():
    cfg = SamplerConfig()  # rates 1, 2, 4, 8, stride 2, jitter 0.2
    n, draws = 10_000, 4000
    rng = np.random.default_rng(1)
    labels = []
    for _ in range(draws):
        indices, label = sample_prp_clip(rng, n, cfg)
        labels.append(label)
        step = cfg.stride * cfg.rates[label]
        gaps = np.diff(indices) % n  # undo the wrap; spans are far shorter than n
        assert gaps.min() >= step * (1 - cfg.jitter) - 1
        assert gaps.max() <= step * (1 + cfg.jitter) + 1
    counts = Counter(labels)
    assert sorted(counts) == [0, 1, 2, 3]
    for c in counts.values():
        assert abs(c - draws / 4) < 0.1 * draws  # ~1000 each; sd ~27


def test_prp_clip_deterministic_and_in_range():
    cfg = SamplerConfig(rates=(1, -2, 8), jitter=0.5)
    a = [sample_prp_clip(np.random.default_rng(9), n, cfg) for n in (1, 3, 17, 500)]
    b = [sample_prp_clip(np.random.default_rng(9), n, cfg) for n in (1, 3, 17, 500)]
    for (ia, la), (ib, lb), n in zip(a, b, (1, 3, 17, 500)):
        assert la == lb and ia.tolist() == ib.tolist()
        assert ia.min() >= 0 and ia.max() < n


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rates": ()},
        {"rates": (1, 0)},
        {"rates": (1.5,)},
        {"frames": 0},
        {"stride": 0},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"jitter": float("nan")},
        {"clips_per_video": 0},
        {"clip_start": "middle"},
        {"clip_order": "random"},
    ],
)
def test_invalid_sampler_config_raises(kwargs):
    with pytest.raises(AdviseCacheError):
        SamplerConfig(**kwargs)


def test_code_clip_start_keeps_the_draw_order_and_the_clip_inside(seed=3):
    """clip_start "code": the start is the third draw as always, from [0, n - frames * stride]
    (the released code's `randint(0, n - 16)`), so a rate-1 clip never wraps."""
    cfg = SamplerConfig(clip_start="code", rates=(1,), jitter=0.0)
    for n in (16, 17, 40, 300):
        rng = np.random.default_rng(seed)
        rng.integers(1), rng.uniform(0, 0)
        start = int(rng.integers(n - 15))
        indices, _ = sample_prp_clip(np.random.default_rng(seed), n, cfg)
        assert indices.tolist() == [start + 2 * k for k in range(8)]
    starts = {int(sample_prp_clip(np.random.default_rng(s), 20, cfg)[0][0]) for s in range(400)}
    assert starts == set(range(5))  # 0 .. 20 - 16, every one drawn
    anywhere = {
        int(sample_prp_clip(np.random.default_rng(s), 20, replace(cfg, clip_start="any"))[0][0]) for s in range(400)
    }
    assert anywhere == set(range(20))


def test_long_enough_leaves_out_short_videos_for_the_code_start(caplog):
    videos, lengths = np.array([5, 6, 7]), np.array([15, 16, 40])
    assert long_enough(videos, lengths, SamplerConfig()).tolist() == [5, 6, 7]
    assert long_enough(videos, lengths, SamplerConfig(clip_start="code")).tolist() == [6, 7]
    assert "leaving out 1 of 3 videos shorter than 16 frames" in caplog.text
    with pytest.raises(AdviseCacheError, match="every video is shorter"):
        long_enough(videos[:1], lengths[:1], SamplerConfig(clip_start="code"))


@pytest.mark.parametrize("world", [1, 2])
def test_by_video_order_keeps_a_videos_clips_together(world):
    """clip_order "by-video": a video's clips follow each other, as the released code's batches of
    8 videos x 4 clips; the clips are the ones the shuffled order draws, only their order differs."""
    cfg = SamplerConfig(clips_per_video=4, clip_order="by-video")
    plans = [prp_epoch(VIDEOS, LENGTHS, cfg, seed=1, epoch=2, rank=r, world=world) for r in range(world)]
    for plan in plans:
        assert len(plan) == 4 * (len(VIDEOS) // world)
        for i in range(0, len(plan), 4):
            assert len({c.video for c in plan[i : i + 4]}) == 1
    assert len({c.video for p in plans for c in p}) == len(VIDEOS) // world * world  # ranks share no video
    shuffled = prp_epoch(VIDEOS, LENGTHS, replace(cfg, clip_order="shuffled"), seed=1, epoch=2)
    one = prp_epoch(VIDEOS, LENGTHS, cfg, seed=1, epoch=2)
    assert sorted(as_tuples(one)) == sorted(as_tuples(shuffled))


def test_jitter_classification_clips_are_rate_1_prp_clips():
    """clip_mode "jitter": the released code's fine-tuning clips, `clips_per_video` rate-1 PRP clips
    a video (start anywhere, wrapping, span jittered), labelled with the video's class."""
    cfg = SamplerConfig(clips_per_video=3, jitter=0.2, clip_order="by-video", clip_start="code")
    plan = classification_epoch(VIDEOS, LENGTHS, LABELS, 0, 1, frames=8, stride=2, mode="jitter", sampler=cfg)
    assert len(plan) == 3 * len(VIDEOS)
    label = dict(zip(VIDEOS.tolist(), LABELS.tolist()))
    length = dict(zip(VIDEOS.tolist(), LENGTHS.tolist()))
    for i in range(0, len(plan), 3):
        assert len({c.video for c in plan[i : i + 3]}) == 1
    for c in plan:
        n = length[c.video]
        assert c.label == label[c.video] and c.indices.shape == (8,)
        steps = np.diff(c.indices) % n
        assert (steps >= 1).all() and (steps <= 3).all() or n < 16  # 2 frames apart, +-20%
    # The same clips a rate-1 PRP sampler draws, starting anywhere whatever the sampler's clip start.
    rng = np.random.default_rng([0, 1])
    first = sample_prp_clip(rng, int(LENGTHS[0]), SamplerConfig(rates=(1,), jitter=0.2))[0]
    ordered = classification_epoch(VIDEOS, LENGTHS, LABELS, 0, 1, mode="jitter", sampler=cfg)
    assert any(c.video == VIDEOS[0] and c.indices.tolist() == first.tolist() for c in ordered)
    assert (multi_view_clips(50, 8, 2, 3, "jitter") == multi_view_clips(50, 8, 2, 3, "stride")).all()


def test_rates_list_becomes_tuple():
    assert SamplerConfig(rates=[1, 2]).rates == (1, 2)


def test_empty_video_raises():
    with pytest.raises(AdviseCacheError):
        sample_prp_clip(np.random.default_rng(0), 0, SamplerConfig())
    with pytest.raises(AdviseCacheError):
        sample_fixed_stride_clip(np.random.default_rng(0), 0)
    with pytest.raises(AdviseCacheError):
        sample_segment_clip(np.random.default_rng(0), 0)


# --- fixed-stride and segment clips -------------------------------------------------------


def test_fixed_stride_clip_long_video_does_not_wrap():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = sample_fixed_stride_clip(rng, 40, frames=8, stride=2)
        assert idx.dtype == np.int64
        assert np.diff(idx).tolist() == [2] * 7
        assert 0 <= idx[0] <= 40 - 16
        starts.add(int(idx[0]))
    assert starts == set(range(25))  # every valid start is reachable


def test_fixed_stride_clip_short_video_wraps():
    idx = sample_fixed_stride_clip(np.random.default_rng(0), 5, frames=8, stride=2)
    assert idx.tolist() == [(2 * k) % 5 for k in range(8)]  # only start 0 is valid


@pytest.mark.parametrize("n", [8, 9, 23, 64, 1000])
def test_segment_clip_one_index_per_segment(n):
    rng = np.random.default_rng(n)
    for jitter in (True, False):
        for _ in range(50):
            idx = sample_segment_clip(rng, n, frames=8, jitter=jitter)
            assert idx.dtype == np.int64 and idx.shape == (8,)
            for k, i in enumerate(idx.tolist()):
                assert k * n // 8 <= i < (k + 1) * n // 8  # inside segment k
            assert (np.diff(idx) > 0).all()


def test_segment_clip_middle_and_coverage():
    assert sample_segment_clip(None, 80, frames=8, jitter=False).tolist() == list(range(5, 80, 10))
    rng = np.random.default_rng(0)
    seen = {int(sample_segment_clip(rng, 80, frames=8)[0]) for _ in range(300)}
    assert seen == set(range(10))  # a jittered frame can be anywhere in its segment


@pytest.mark.parametrize("n", [1, 3, 7])
def test_segment_clip_short_video(n):
    rng = np.random.default_rng(0)
    for jitter in (True, False):
        idx = sample_segment_clip(rng, n, frames=8, jitter=jitter)
        assert idx.shape == (8,)
        assert idx.min() >= 0 and idx.max() < n
        assert (np.diff(idx) >= 0).all()
        assert set(idx.tolist()) == set(range(n))  # every frame still used


# --- multi-view ---------------------------------------------------------------------------


def test_multi_view_stride_shape_and_coverage():
    views = multi_view_clips(100, frames=8, stride=2, views=5, mode="stride")
    assert views.shape == (5, 8) and views.dtype == np.int64
    assert views[:, 0].tolist() == [0, 21, 42, 63, 84]  # evenly over [0, 100 - 16]
    assert (np.diff(views, axis=1) == 2).all()
    assert views.max() < 100
    assert np.array_equal(views, multi_view_clips(100, 8, 2, 5, "stride"))


def test_multi_view_stride_single_view_is_centre():
    assert multi_view_clips(100, 8, 2, 1)[0].tolist() == list(range(42, 58, 2))


def test_multi_view_stride_short_video_wraps():
    views = multi_view_clips(10, frames=8, stride=2, views=3)
    assert views.tolist() == [[(2 * k) % 10 for k in range(8)]] * 3


def test_multi_view_segment():
    views = multi_view_clips(80, frames=8, views=2, mode="segment")
    assert views.shape == (2, 8)
    assert views[0].tolist() == list(range(2, 80, 10))  # 0.25 of each 10-frame segment
    assert views[1].tolist() == list(range(7, 80, 10))  # 0.75
    one = multi_view_clips(80, frames=8, views=1, mode="segment")
    assert one[0].tolist() == sample_segment_clip(None, 80, 8, jitter=False).tolist()
    for n in (3, 9, 37):
        v = multi_view_clips(n, frames=8, views=4, mode="segment")
        assert v.min() >= 0 and v.max() < n
        assert (np.diff(v, axis=1) >= 0).all()
        for k in range(8):
            lo, hi = k * n // 8, max((k + 1) * n // 8, k * n // 8 + 1)
            assert ((v[:, k] >= lo) & (v[:, k] < hi)).all()


def test_multi_view_invalid():
    with pytest.raises(AdviseCacheError):
        multi_view_clips(10, views=0)
    with pytest.raises(AdviseCacheError):
        multi_view_clips(10, mode="dense")


# --- epoch plans --------------------------------------------------------------------------

VIDEOS = np.array([3, 5, 8, 13, 21, 34, 55])
LENGTHS = np.array([100, 7, 250, 40, 1, 64, 33])
LABELS = np.array([0, 1, 2, 0, 1, 2, 0])


def test_prp_epoch_deterministic_and_counts():
    cfg = SamplerConfig(clips_per_video=3)
    a = prp_epoch(VIDEOS, LENGTHS, cfg, seed=4, epoch=0)
    b = prp_epoch(VIDEOS, LENGTHS, cfg, seed=4, epoch=0)
    assert as_tuples(a) == as_tuples(b)
    assert len(a) == 21
    assert Counter(c.video for c in a) == {int(v): 3 for v in VIDEOS}
    length = dict(zip(VIDEOS.tolist(), LENGTHS.tolist()))
    for c in a:
        assert c.indices.dtype == np.int64 and c.indices.shape == (8,)
        assert 0 <= c.indices.min() and c.indices.max() < length[c.video]
        assert c.label in range(4)


def test_prp_epoch_matches_sample_prp_clip_in_video_order():
    cfg = SamplerConfig(clips_per_video=2)
    rng = np.random.default_rng([4, 1])
    want = []
    for v, n in zip(VIDEOS.tolist(), LENGTHS.tolist()):
        for _ in range(2):
            idx, label = sample_prp_clip(rng, n, cfg)
            want.append((v, tuple(idx.tolist()), label))
    got = as_tuples(prp_epoch(VIDEOS, LENGTHS, cfg, seed=4, epoch=1))
    assert sorted(got) == sorted(want)
    assert got != want  # shuffled


def test_epochs_and_seeds_differ():
    cfg = SamplerConfig()
    e0 = as_tuples(prp_epoch(VIDEOS, LENGTHS, cfg, seed=0, epoch=0))
    assert e0 != as_tuples(prp_epoch(VIDEOS, LENGTHS, cfg, seed=0, epoch=1))
    assert e0 != as_tuples(prp_epoch(VIDEOS, LENGTHS, cfg, seed=1, epoch=0))
    c0 = as_tuples(classification_epoch(VIDEOS, LENGTHS, LABELS, seed=0, epoch=0))
    assert c0 != as_tuples(classification_epoch(VIDEOS, LENGTHS, LABELS, seed=0, epoch=1))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_prp_epoch_rank_slices(world):
    cfg = SamplerConfig(clips_per_video=3)  # 21 clips
    full = as_tuples(prp_epoch(VIDEOS, LENGTHS, cfg, seed=2, epoch=5))
    keep = len(full) - len(full) % world
    parts = [as_tuples(prp_epoch(VIDEOS, LENGTHS, cfg, 2, 5, rank=r, world=world)) for r in range(world)]
    assert all(len(p) == keep // world for p in parts)
    # The interleaved slices rebuild the truncated single-rank list exactly.
    rebuilt = [None] * keep
    for r, part in enumerate(parts):
        rebuilt[r::world] = part
    assert rebuilt == full[:keep]
    positions = [set(range(r, keep, world)) for r in range(world)]
    assert sum(len(p) for p in positions) == len(set().union(*positions)) == keep


@pytest.mark.parametrize("mode", ["stride", "segment"])
def test_classification_epoch(mode):
    plan = classification_epoch(VIDEOS, LENGTHS, LABELS, seed=0, epoch=2, frames=4, mode=mode)
    assert as_tuples(plan) == as_tuples(
        classification_epoch(VIDEOS, LENGTHS, LABELS, seed=0, epoch=2, frames=4, mode=mode)
    )
    assert sorted(c.video for c in plan) == sorted(VIDEOS.tolist())
    label = dict(zip(VIDEOS.tolist(), LABELS.tolist()))
    length = dict(zip(VIDEOS.tolist(), LENGTHS.tolist()))
    for c in plan:
        assert c.label == label[c.video]
        assert c.indices.shape == (4,) and c.indices.dtype == np.int64
        assert c.indices.min() >= 0 and c.indices.max() < length[c.video]
    full = as_tuples(plan)
    parts = [classification_epoch(VIDEOS, LENGTHS, LABELS, 0, 2, 4, mode=mode, rank=r, world=3) for r in range(3)]
    parts = [as_tuples(p) for p in parts]
    assert [len(p) for p in parts] == [2, 2, 2]  # 7 clips: the last one dropped
    rebuilt = [None] * 6
    for r, part in enumerate(parts):
        rebuilt[r::3] = part
    assert rebuilt == full[:6]


@pytest.mark.parametrize(
    "call",
    [
        lambda: prp_epoch(VIDEOS, LENGTHS[:-1], SamplerConfig(), 0, 0),
        lambda: prp_epoch(np.array([], int), np.array([], int), SamplerConfig(), 0, 0),
        lambda: prp_epoch(VIDEOS, np.where(LENGTHS == 1, 0, LENGTHS), SamplerConfig(), 0, 0),
        lambda: prp_epoch(VIDEOS, LENGTHS, SamplerConfig(), 0, 0, rank=2, world=2),
        lambda: prp_epoch(VIDEOS, LENGTHS, SamplerConfig(), 0, 0, rank=0, world=0),
        lambda: prp_epoch(VIDEOS, LENGTHS, SamplerConfig(), -1, 0),
        lambda: prp_epoch(VIDEOS[:1], LENGTHS[:1], SamplerConfig(clips_per_video=2), 0, 0, world=3),
        lambda: classification_epoch(VIDEOS, LENGTHS, LABELS[:-1], 0, 0),
        lambda: classification_epoch(VIDEOS, LENGTHS, LABELS, 0, 0, mode="dense"),
        lambda: classification_epoch(VIDEOS, LENGTHS, LABELS, 0, 0, frames=0),
        lambda: classification_epoch(VIDEOS, LENGTHS, LABELS, 0, 0, stride=0),
    ],
)
def test_invalid_epoch_arguments_raise(call):
    with pytest.raises(AdviseCacheError):
        call()
