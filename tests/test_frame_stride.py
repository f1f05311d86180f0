"""A store extracted with --frame-stride 2 (issue 12): half the bytes, and the paper's recipe
(base stride 2 in frames of the video) served exactly as stride 1 over the stored frames;
a source stride the store does not hold is refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import extract_config, train_config
from typer.testing import CliRunner

from advise_cache.checkpoint import load_checkpoint
from advise_cache.cli import app
from advise_cache.errors import MismatchError
from advise_cache.extract import extract_videos
from advise_cache.sampling import SamplerConfig, sample_prp_clip
from advise_cache.store import open_store
from advise_cache.train import resolve_stride

runner = CliRunner()


@pytest.fixture(scope="module")
def stride2_store(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "stride2.zarr"
    summary = extract_videos(extract_config(synthetic_root, out, frame_stride=2))
    assert summary.exit_code == 0, summary.failed
    return out


def test_a_stride_2_store_holds_every_second_frame_in_half_the_bytes(synthetic_store, stride2_store):
    full, half = open_store(synthetic_store).ifm(), open_store(stride2_store).ifm()
    assert half.meta.frame_stride == 2
    assert np.array_equal(half.frames, -(-full.frames // 2))
    assert half.frames.sum() <= (full.frames.sum() + len(full.frames)) // 2
    np.testing.assert_array_equal(half.read_video(0), full.read_video(0)[::2])


def test_source_stride_becomes_stored_frames_or_is_refused(synthetic_store, stride2_store, tmp_path):
    def stride(cache, source_stride):
        return resolve_stride(train_config(cache, tmp_path, source_stride=source_stride)).sampler.stride

    assert stride(stride2_store, 2) == 1  # the paper's base stride 2: every stored frame
    assert stride(stride2_store, 4) == 2
    assert stride(synthetic_store, 3) == 3  # a stride-1 store holds every source stride
    with pytest.raises(MismatchError, match="--source-stride 3: .* every 2-th frame .* --frame-stride 2"):
        stride(stride2_store, 3)
    # Without a source stride, --stride counts stored frames as before: said when it differs.
    assert resolve_stride(train_config(synthetic_store, tmp_path)).sampler.stride == SamplerConfig().stride


def test_stride_in_stored_frames_on_a_strided_store_is_pointed_out(stride2_store, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="advise_cache.train"):
        assert resolve_stride(train_config(stride2_store, tmp_path)).sampler.stride == 2
    assert "clip frames are 4 frames of the video apart" in caplog.text


def test_prp_at_stride_1_over_a_stride_2_store_is_the_papers_stride_2():
    """Without jitter, a PRP clip of stored frames, mapped back to the video's frames (x 2), is
    the clip the paper samples at base stride 2 from an even start: rate r steps 2r frames."""
    cfg = SamplerConfig(stride=1, jitter=0.0, rates=(1, 2, 4, 8))
    rng = np.random.default_rng(0)
    n_source = 301
    n_stored = -(-n_source // 2)
    for _ in range(50):
        indices, label = sample_prp_clip(rng, n_stored, cfg)
        rate = cfg.rates[label]
        source = 2 * indices
        expected = (source[0] + 2 * rate * np.arange(cfg.frames)) % (2 * n_stored)
        np.testing.assert_array_equal(source, expected)
        assert source.max() < n_source  # only frames the store holds


def test_pretrain_and_finetune_from_a_stride_2_store(synthetic_store, stride2_store, tmp_path):
    common = ["--cache", str(stride2_store), *"--epochs 1 --batch-size 8 --device cpu --hidden 16 --out-dim 32".split()]
    common += "--loader-threads 1 --source-stride 2".split()
    r = runner.invoke(app, ["train", *common, "--out", str(tmp_path / "prp")])
    assert r.exit_code == 0, r.output
    meta = load_checkpoint(tmp_path / "prp").meta
    assert meta.config.sampler.stride == 1 and meta.config.source_stride == 2
    assert meta.fingerprint["features"][0]["frame_stride"] == 2
    r = runner.invoke(app, ["finetune", *common, "--out", str(tmp_path / "ft"), "--init", str(tmp_path / "prp")])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "ft").meta.config.sampler.stride == 1
    ft = tmp_path / "ft"
    views = "--device cpu --views 2".split()
    r = runner.invoke(app, ["evaluate", "--cache", str(stride2_store), "--checkpoint", str(ft), *views])
    assert r.exit_code == 0, r.output
    assert "frame stride" not in r.output
    # The features of a stride-1 store fit the checkpoint, but its clips would span half the
    # video's frames: said, not silent.
    r = runner.invoke(app, ["evaluate", "--cache", str(synthetic_store), "--checkpoint", str(ft), *views])
    assert r.exit_code == 0, r.output
    assert "was 2 frames of the video on the store it was trained on (frame stride 2) and is 1 here" in r.output


def test_a_source_stride_the_store_lacks_is_one_line(stride2_store, tmp_path):
    args = ["train", "--cache", str(stride2_store), "--out", str(tmp_path / "x")]
    r = runner.invoke(app, [*args, *"--device cpu --source-stride 3".split()])
    assert r.exit_code == 2
    lines = [t for t in r.output.splitlines() if t.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --source-stride 3: "), r.output
    assert not (tmp_path / "x").exists()
