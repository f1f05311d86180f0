"""Tests of the synthetic dataset generator: layout, determinism, the temporal property.

.venv/bin/python -m pytest tests/test_synthetic.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import decord
import numpy as np
import pytest

from advise_cache import synthetic
from advise_cache.errors import LayoutError
from advise_cache.synthetic import (
    APPEARANCE_CLASSES,
    MOTION_CLASSES,
    TEMPORAL_CLASSES,
    generate_synthetic,
)

SMALL = dict(train_per_class=2, test_per_class=1, min_frames=16, max_frames=24, width=64, height=48)
# Longer videos for the temporal checks, so slopes are tested over the default length range.
TEMPORAL = dict(train_per_class=8, test_per_class=0, min_frames=16, max_frames=64, width=64, height=48)


def _decode(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _videos(root: Path) -> list[Path]:
    return sorted(root.rglob("*.mp4"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("small") / "synth", **SMALL)


@pytest.fixture(scope="module")
def temporal(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    root = generate_synthetic(tmp_path_factory.mktemp("temporal"), "temporal", **TEMPORAL)
    return {
        name: [_decode(p).astype(np.float32) for p in sorted((root / "train" / name).iterdir())]
        for name in TEMPORAL_CLASSES
    }


def test_class_names():
    assert len(APPEARANCE_CLASSES) == 4 and len(TEMPORAL_CLASSES) == 4
    assert all(c.startswith("appearance_") for c in APPEARANCE_CLASSES)
    assert set(TEMPORAL_CLASSES) == {
        "temporal_brighten",
        "temporal_darken",
        "temporal_brighten_darken",
        "temporal_darken_brighten",
    }


def test_layout_and_decode(small):
    info = json.loads((small / "SYNTHETIC.json").read_text())
    assert info["classes"] == list(APPEARANCE_CLASSES + TEMPORAL_CLASSES)
    assert info["num_videos"] == 8 * 3
    assert {k: info[k] for k in SMALL} == SMALL
    for split, count in (("train", 2), ("test", 1)):
        for name in info["classes"]:
            files = sorted((small / split / name).iterdir())
            assert [f.name for f in files] == [f"{name}_{i:03d}.mp4" for i in range(count)]
            for f in files:
                reader = decord.VideoReader(str(f))
                assert 16 <= len(reader) <= 24
                assert reader[0].shape == (48, 64, 3)
                assert round(reader.get_avg_fps()) in (12, 15, 24, 25, 30)
    assert len(_videos(small)) == info["num_videos"]
    assert not list(small.rglob("*.partial")) and not list(small.rglob("*.tmp"))


def test_same_seed_same_frames_other_seed_differs(small, tmp_path):
    again = generate_synthetic(tmp_path / "again", **SMALL)
    other = generate_synthetic(tmp_path / "other", seed=1, **SMALL)
    differs = 0
    for a, b, c in zip(_videos(small), _videos(again), _videos(other)):
        assert a.relative_to(small) == b.relative_to(again) == c.relative_to(other)
        frames = _decode(a)
        np.testing.assert_array_equal(frames, _decode(b))
        third = _decode(c)
        differs += frames.shape != third.shape or not np.array_equal(frames, third)
    assert differs == len(_videos(small))


def test_a_video_does_not_depend_on_the_others(small, tmp_path):
    # Fewer videos and one family only: the videos that remain are the same ones.
    alone = generate_synthetic(tmp_path, "temporal", **{**SMALL, "train_per_class": 1})
    for name in TEMPORAL_CLASSES:
        rel = Path("train", name, f"{name}_000.mp4")
        np.testing.assert_array_equal(_decode(alone / rel), _decode(small / rel))


def _slope(values: np.ndarray) -> float:
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


def _brightness(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=(1, 2, 3))


def _halves(values: np.ndarray) -> tuple[float, float]:
    """Slopes of the first and the second half of a profile."""
    mid = len(values) // 2
    return _slope(values[: mid + 1]), _slope(values[mid:])


# Sign of the slope in each half of the video, per class.
SHAPES = {
    "temporal_brighten": (1, 1),
    "temporal_darken": (-1, -1),
    "temporal_brighten_darken": (1, -1),
    "temporal_darken_brighten": (-1, 1),
}


def test_temporal_classes_differ_only_in_order(temporal):
    # The order tells the class, for every video, and 16 frames show a clear change
    # (more than 8 grey levels of mean brightness).
    for name, signs in SHAPES.items():
        for video in temporal[name]:
            slopes = _halves(_brightness(video))
            assert all(sign * slope * 15 > 8.0 for sign, slope in zip(signs, slopes)), (name, slopes)
    # A time average does not: every profile covers the same levels at the same speed, so
    # every class's time averages estimate one mean. Each class's difference from the
    # others should then be ~ N(0, SE) with SE = pooled sd * sqrt(2 / n); 3 SE bounds it
    # (the seed is fixed, so this never flakes) while a real offset would exceed it.
    means = {name: np.array([_brightness(v).mean() for v in temporal[name]]) for name in SHAPES}
    pooled = np.sqrt(np.mean([m.var(ddof=1) for m in means.values()]))
    names = list(SHAPES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            se = pooled * np.sqrt(2 / len(means[a]))
            assert abs(means[a].mean() - means[b].mean()) < 3 * se, (a, b)
            # And their time averages interleave rather than separate.
            assert means[a].min() < means[b].max() and means[b].min() < means[a].max()


def test_marker_is_written_last(small):
    marker = (small / "SYNTHETIC.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker for p in _videos(small))


def test_interrupted_run_leaves_no_marker_and_is_redone(tmp_path, monkeypatch):
    encode, calls = synthetic._encode, []

    def dies_on_third(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"half a video")
            raise KeyboardInterrupt
        encode(path, frames, fps)

    monkeypatch.setattr(synthetic, "_encode", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path, "appearance", **SMALL)
    assert not (tmp_path / "SYNTHETIC.json").exists()
    assert len(_videos(tmp_path)) == 2  # the half-written one never got its final name

    monkeypatch.setattr(synthetic, "_encode", encode)
    generate_synthetic(tmp_path, "appearance", **SMALL)
    assert (tmp_path / "SYNTHETIC.json").exists()
    assert len(_videos(tmp_path)) == 4 * 3
    assert not list(tmp_path.rglob("*.partial"))


def test_idempotent_and_refuses_other_parameters(small):
    stamps = {p: p.stat().st_mtime_ns for p in [*_videos(small), small / "SYNTHETIC.json"]}
    assert generate_synthetic(small, **SMALL) == small
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    with pytest.raises(LayoutError, match="another root"):
        generate_synthetic(small, seed=3, **SMALL)
    with pytest.raises(LayoutError, match="another root"):
        generate_synthetic(small, "temporal", **SMALL)


def test_bad_family_and_foreign_folder_raise(tmp_path):
    with pytest.raises(LayoutError, match="family"):
        generate_synthetic(tmp_path, "spatial")
    (tmp_path / "notes.txt").write_text("not ours")
    with pytest.raises(LayoutError, match="not a synthetic dataset"):
        generate_synthetic(tmp_path, **SMALL)
    assert os.listdir(tmp_path) == ["notes.txt"]


def _disc_centres(frames: np.ndarray) -> np.ndarray:
    """Per frame, the centroid of the pixels brighter than any background can be."""
    mask = frames.min(axis=3) > 150
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    count = mask.sum(axis=(1, 2))
    assert (count > 0).all()
    return np.stack([(mask * xs).sum(axis=(1, 2)) / count, (mask * ys).sum(axis=(1, 2)) / count], 1)


def test_motion_classes_differ_in_speed_only(tmp_path):
    root = generate_synthetic(tmp_path, "motion", **{**SMALL, "train_per_class": 3, "test_per_class": 0})
    speeds = {}
    for name in MOTION_CLASSES:
        for path in sorted((root / "train" / name).iterdir()):
            frames = _decode(path)
            # Speed in pixels per frame: the median step (a bounce only shortens one step).
            speeds.setdefault(name, []).append(
                float(np.median(np.linalg.norm(np.diff(_disc_centres(frames), axis=0), axis=1)))
            )
            # The background stands still: away from the disc, frames differ by noise only.
            still = (frames.min(axis=3) < 140).all(axis=0)
            assert np.abs(np.diff(frames.astype(np.float32), axis=0))[:, still].mean() < 8
    side = min(SMALL["width"], SMALL["height"])
    for name in MOTION_CLASSES:
        factor = int(name.rsplit("_", 1)[1])
        expected = synthetic._MOTION_BASE_SPEED * side * factor
        # Within the ±15% jitter, plus a pixel of centroid error from the codec and the noise.
        for s in speeds[name]:
            assert abs(s - expected) <= 0.15 * expected + 0.4, (name, s, expected)


def test_appearance_class_survives_a_spatial_average(tmp_path):
    # The shapes are large (synthetic.py says why): the mean colour of the centre square (what
    # the image model's crop keeps), averaged over the whole video, tells the class. Nearest
    # class mean, fitted on the train split; the 0.75 bar (12 of 16, chance 4) was set first.
    root = generate_synthetic(tmp_path, "appearance", **{**SMALL, "train_per_class": 8, "test_per_class": 4})
    side = min(SMALL["width"], SMALL["height"])
    left = (SMALL["width"] - side) // 2

    def mean_colours(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, name in enumerate(APPEARANCE_CLASSES):
            for path in sorted((root / split / name).iterdir()):
                xs.append(_decode(path)[:, :, left : left + side].astype(np.float32).mean(axis=(0, 1, 2)))
                ys.append(label)
        return np.stack(xs), np.array(ys)

    x_train, y_train = mean_colours("train")
    x_test, y_test = mean_colours("test")
    centres = np.stack([x_train[y_train == k].mean(0) for k in range(len(APPEARANCE_CLASSES))])
    predicted = np.linalg.norm(x_test[:, None] - centres[None], axis=2).argmin(1)
    assert (predicted == y_test).mean() >= 0.75, predicted
