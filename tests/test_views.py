"""Stored views (issue 21): `extract --aug-views N --crops 3` keeps, besides the centre crop, N
augmented views and the three evaluation crops of every frame; info, verify, the size plan and
the readers know them; training draws one view per clip; `evaluate --crops` averages the crops."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FAST_EXTRACT, extract_config, patch_frame
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.extract import extract_videos
from advise_cache.integrity import verify
from advise_cache.pixels import PixelSpec, resize_tensor
from advise_cache.store import open_store
from advise_cache.testing import video_table
from advise_cache.views import draw, view_pixels, view_specs

runner = CliRunner()
SPEC = PixelSpec(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # test-vit's input size


def one_line(args: list, match: str) -> None:
    r = runner.invoke(app, [str(a) for a in args])
    lines = [t for t in re.split(r"[\r\n]", r.stderr) if t.strip() and not re.search(r"\d+%\|", t)]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert re.search(match, lines[0]), lines[0]


# -- extraction, info, verify, the plan ------------------------------------------------------
def test_extract_with_views_writes_the_planned_bytes_and_info_and_verify_know_them(views_root, tmp_path):
    out = tmp_path / "v.zarr"
    base = ["extract", "synthetic-appearance", "--root", views_root, "--out", out, *FAST_EXTRACT]
    base += ["--frames-per-shard", "8", "--aug-views", "2", "--crops", "3"]
    r = runner.invoke(app, [str(a) for a in [*base, "--dry-run", "--json"]])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert not out.exists() and plan["views"] == 6
    frames = int(plan["source_frames"])
    assert plan["chosen"]["frames"] == 6 * frames  # every view's rows are counted

    r = runner.invoke(app, [str(a) for a in base])
    assert r.exit_code == 0, r.output
    shards = sum(p.stat().st_size for p in (out / "ifm/test-vit/tokens/c").rglob("*") if p.is_file())
    assert shards == plan["chosen"]["bytes"]

    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "views of every frame (6)" in r.stdout and "simple #1 (resize 91x73, random 64 crop" in r.stdout
    assert "crop start (short side 73, 64 crop)" in r.stdout
    views = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)["ifms"]["test-vit"]["views"]
    assert [v["kind"] for v in views] == ["centre", "simple", "simple", "crop", "crop", "crop"]
    assert views[1]["seed"] == 0 and views[1]["draw"] == 0 and views[2]["draw"] == 1
    r = runner.invoke(app, ["verify", str(out), "--deep"])
    assert r.exit_code == 0, r.output


def test_view_zero_is_the_centre_crop_of_a_store_without_views(views_root, views_store, tmp_path):
    plain = tmp_path / "plain.zarr"
    assert extract_videos(extract_config(views_root, plain, dataset="synthetic-appearance")).exit_code == 0
    a, b = open_store(views_store).ifm(), open_store(plain).ifm()
    assert "views" not in b.meta.stored and len(b.views) == 1  # a store without views is laid out as before
    assert len(a.views) == 6 and a.tokens.shape[0] == 6 * b.tokens.shape[0]
    for v in range(len(a.frames)):
        np.testing.assert_array_equal(a.read_video(v, view=0), b.read_video(v))
        others = [a.read_video(v, view=k) for k in range(1, 6)]
        assert all(not np.array_equal(x, others[0]) for x in others[1:])  # each view its own pixels
        assert all(not np.array_equal(x, b.read_video(v)) for x in others)
        np.testing.assert_array_equal(a.read_frames(v, [1, 0], view=4), others[3][[1, 0]])


def test_verify_deep_checks_every_view(views_store, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(views_store, store)
    a = open_store(store).ifm()
    v, view, frame = 2, 3, 1
    at = view * int(a.view_stride[v]) + frame  # the frame's place in the video's slot
    patch_frame(store, v, at, 6, np.float16(7.5).tobytes())  # a new value, its crc32c made to match
    name = a.store.videos.name[v]
    problems = verify(open_store(store), deep=True)
    assert problems == [
        f"test-vit: {name}: its tokens differ from the checksum written at extraction (corrupted on disk)"
    ]
    assert verify(open_store(store), deep=False) == []  # its crc32c matches: only --deep sees it


def test_a_damaged_frame_of_a_view_is_named_with_its_view(views_store, tmp_path):
    from conftest import frame_chunk

    from advise_cache.errors import DamagedFrameError

    store = tmp_path / "s.zarr"
    shutil.copytree(views_store, store)
    a = open_store(store).ifm()
    at = 2 * int(a.view_stride[1]) + 3
    path, start, _ = frame_chunk(store, 1, at)
    raw = bytearray(path.read_bytes())
    raw[start + 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedFrameError, match=r"frame 3 \(view 2\) fails its crc32c"):
        open_store(store).ifm().read_frames(1, [3], view=2)


def test_resuming_with_other_views_is_refused(views_root, views_store, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(views_store, store)
    cfg = extract_config(views_root, store, dataset="synthetic-appearance", aug_views=1, crops=3)
    with pytest.raises(Exception, match="made differently.*views"):
        extract_videos(cfg)


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--crops", "2"], "--crops must be one of 0, 1, 3"),
        (["--aug-views", "-1"], "--aug-views must be >= 0"),
        (["--aug-views", "1", "--resize", "pil"], "need --resize tensor"),
    ],
)
def test_bad_view_flags_are_one_line(views_root, tmp_path, flags, match):
    out = tmp_path / "x.zarr"
    one_line(["extract", "synthetic-appearance", "--root", views_root, "--out", out, *FAST_EXTRACT, *flags], match)
    assert not out.exists()


# -- the pixels of a view -------------------------------------------------------------------
def _video(frames: int = 4, h: int = 72, w: int = 96) -> torch.Tensor:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return torch.from_numpy(np.stack([frame] * frames))


def test_an_augmented_view_is_one_draw_for_every_frame_of_a_video():
    views = view_specs(3, 0, seed=5, size=64)
    x = _video()
    for view in views[1:]:
        out = view_pixels(x, view, 7, SPEC)
        assert out.shape == (4, 64, 64, 3) and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))  # same frames in, same view out
    draws = [draw(v, video) for v in views[1:] for video in (7, 8)]
    assert len({json.dumps(d, sort_keys=True) for d in draws}) == len(draws)  # per video and view
    assert draw(views[1], 7) == draw(view_specs(3, 0, seed=5, size=64)[1], 7)  # from the recorded seed
    assert draw(views[1], 7) != draw(view_specs(3, 0, seed=6, size=64)[1], 7)
    jittered = [v for v in views[1:] if draw(v, 7)["jitter"]]
    for view in jittered:  # the crop of the resized frame, then the colour jitter changed it
        d = draw(view, 7)
        w, h = view["resize"]
        crop = resize_tensor(x, h, w, "bilinear")[:, d["top"] : d["top"] + 64, d["left"] : d["left"] + 64]
        assert not torch.equal(view_pixels(x, view, 7, SPEC), crop)


def test_the_evaluation_crops_are_start_centre_end_of_the_long_side():
    views = view_specs(0, 3, seed=0, size=64)[1:]
    assert [v["position"] for v in views] == ["start", "centre", "end"] and views[0]["short_side"] == 73
    for h, w in ((72, 96), (96, 72)):
        x = _video(2, h, w)
        nh, nw = (73, int(73 * w / h)) if h <= w else (int(73 * h / w), 73)
        full = resize_tensor(x, nh, nw, "bicubic")
        crops = [view_pixels(x, v, 0, SPEC) for v in views]
        if w > h:
            top = (nh - 64) // 2
            want = [full[:, top : top + 64, a : a + 64] for a in (0, (nw - 64) // 2, nw - 64)]
        else:
            left = (nw - 64) // 2
            want = [full[:, a : a + 64, left : left + 64] for a in (0, (nh - 64) // 2, nh - 64)]
        for got, expected in zip(crops, want):
            assert torch.equal(got, expected)


# -- training: one view per clip ------------------------------------------------------------
def test_a_clip_draws_one_view_for_all_its_frames_and_another_next_epoch(views_store, tmp_path, monkeypatch):
    from conftest import read_metrics, train_config

    from advise_cache import train as train_mod
    from advise_cache.loader import ClipLoader, TokenSource

    plans = []

    def recording(source, plan, *a, **k):
        plans.append(plan)
        return ClipLoader(source, plan, *a, **k)

    monkeypatch.setattr(train_mod, "ClipLoader", recording)
    cfg = train_config(views_store, tmp_path / "ft", task="classify", epochs=3, batch_size=4, init=None)
    train_mod.train(cfg)
    assert len(plans) == 3 and read_metrics(tmp_path / "ft")
    by_epoch = [{r.video: r.view for r in plan} for plan in plans]
    assert set().union(*(set(e.values()) for e in by_epoch)) == {0, 1, 2}  # the centre crop and both augmented
    videos = sorted(by_epoch[0])
    assert any(len({e[v] for e in by_epoch}) > 1 for v in videos)  # a video's clip changes view across epochs
    assert [r.indices.tolist() for r in plans[0]] == [r.indices.tolist() for r in _plain_plan(views_store, cfg)]

    source = TokenSource(open_store(views_store))
    a = source.arrays[0]
    plan = plans[1][:4]
    x, _ = next(iter(ClipLoader(source, plan, batch_size=4)))
    for b, r in enumerate(plan):  # every frame of clip b is its view's frame
        clip = x[b].permute(1, 2, 3, 0).numpy()
        np.testing.assert_array_equal(clip, a.read_frames(r.video, r.indices, view=r.view))
        for other in set(range(3)) - {r.view}:
            assert all(
                not np.array_equal(clip[t], a.read_frames(r.video, [i], view=other)[0]) for t, i in enumerate(r.indices)
            )


def _plain_plan(store, cfg):
    """The clips a run on the same videos draws without views: views change only which rows."""
    from advise_cache.loader import TokenSource
    from advise_cache.runtime import Dist
    from advise_cache.train import _plan

    source = TokenSource(open_store(store))
    videos, _ = source.videos("train")
    return _plan(replace(cfg, views_train="centre"), source, videos, source.store.videos.label[videos], 0, Dist())


def test_views_train_chooses_the_pool_and_a_preloaded_run_reads_the_same_views(views_store, tmp_path):
    from conftest import read_metrics, train_config

    from advise_cache.loader import TokenSource
    from advise_cache.train import train

    source = TokenSource(open_store(views_store))
    assert source.train_views("all") == [0, 1, 2] and source.train_views("augmented") == [1, 2]
    assert source.train_views("centre") == [0] and source.train_views("1") == [0, 1]
    cfg = train_config(views_store, tmp_path / "store", task="classify", epochs=2, batch_size=4)
    train(cfg)
    train(replace(cfg, out=tmp_path / "ram", preload="ram"))
    losses = [[r["loss"] for r in read_metrics(tmp_path / d)] for d in ("store", "ram")]
    assert losses[0] == losses[1]


def test_resuming_with_another_views_train_needs_override(views_store, tmp_path):
    from conftest import train_config

    from advise_cache.errors import MismatchError
    from advise_cache.train import train

    cfg = train_config(views_store, tmp_path / "r", task="classify", epochs=2, batch_size=4, max_steps=1)
    train(cfg)
    again = replace(cfg, max_steps=None, resume=True, views_train="centre")
    with pytest.raises(MismatchError, match="--views-train 'all' then, 'centre' now"):
        train(again)
    assert train(replace(again, override=True))["step"] > 1  # --override continues with the new pool


def test_views_train_augmented_needs_augmented_views(synthetic_store, tmp_path):
    one_line(
        ["finetune", "--cache", synthetic_store, "--out", tmp_path / "r", "--scratch", "--views-train", "augmented"],
        "holds no augmented views",
    )
    assert not (tmp_path / "r").exists()  # refused before the run folder is made
    one_line(
        ["finetune", "--cache", synthetic_store, "--out", tmp_path / "r", "--scratch", "--views-train", "x"],
        "--views-train must be one of",
    )


# -- evaluation: clips x stored crops -------------------------------------------------------
def test_evaluate_averages_logits_over_clips_and_stored_crops(views_root, views_store, tmp_path):
    from conftest import train_config

    from advise_cache.evaluate import video_outputs
    from advise_cache.loader import collate
    from advise_cache.sampling import multi_view_clips
    from advise_cache.train import train
    from advise_cache.trained import load_model

    run = tmp_path / "ft"
    train(train_config(views_store, run, task="classify", epochs=2, batch_size=4))
    r = runner.invoke(app, ["evaluate", "--cache", str(views_store), "--checkpoint", str(run), "--views", "10", "--crops", "3", "--json", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["views"] == 10 and result["crops"] == 3 and 0.0 <= result["top1"] <= 1.0
    assert result["videos"] == 4

    model, meta, source = load_model(run, open_store(views_store), torch.device("cpu"))
    model.eval()
    v = int(source.videos("test")[0][0])
    got = video_outputs(model, source, [v], 10, meta.config.sampler.frames, meta.config.sampler.stride, "stride", torch.device("cpu"), stored=(3, 4, 5))  # fmt: skip
    clips = multi_view_clips(
        int(source.frames[v]), meta.config.sampler.frames, meta.config.sampler.stride, 10, "stride"
    )
    with torch.no_grad():
        each = [model(collate([source.clip(v, idx, "cpu", k)])).float()[0] for idx in clips for k in (3, 4, 5)]
    np.testing.assert_allclose(got[0], torch.stack(each).mean(0).numpy(), rtol=1e-5, atol=1e-6)
    centre = video_outputs(model, source, [v], 10, meta.config.sampler.frames, meta.config.sampler.stride, "stride", torch.device("cpu"))  # fmt: skip
    assert not np.allclose(got, centre)  # the crops are other pixels than the centre crop

    plain = tmp_path / "plain.zarr"
    assert extract_videos(extract_config(views_root, plain, dataset="synthetic-appearance")).exit_code == 0
    one_line(
        ["evaluate", "--cache", plain, "--checkpoint", run, "--crops", "3", "--device", "cpu"],
        "holds no evaluation crops",
    )
    one_line(
        ["evaluate", "--cache", views_store, "--checkpoint", run, "--crops", "2", "--device", "cpu"],
        "holds 3 evaluation crop",
    )


def test_write_video_takes_every_view_one_after_the_other(tmp_path):
    from advise_cache.store import create_store

    create_store(tmp_path / "s.zarr", "bench", str(tmp_path), ["a"], video_table([5, 3]))
    info = {"model": "m", "pretrained": "none", "weights_sha256": None, "input_size": 64, "grid": [1, 1], "dim": 2}
    a = open_store(tmp_path / "s.zarr", mode="r+").add_ifm("m", info, 1, 4, views=view_specs(2, 0, 0, 64))
    x = np.arange(3 * 5 * 2, dtype=np.float16).reshape(15, 1, 1, 2)
    a.write_video(0, x)
    for k in range(3):
        np.testing.assert_array_equal(a.read_video(0, k), x[5 * k : 5 * k + 5])
    assert verify(open_store(tmp_path / "s.zarr"), deep=True) == ["m: v1: not extracted yet"]


def test_an_int8_store_with_views_measures_its_error_over_every_view(views_root, tmp_path):
    out = tmp_path / "q.zarr"
    cfg = extract_config(views_root, out, dataset="synthetic-appearance", aug_views=1, dtype="int8")
    assert extract_videos(cfg).exit_code == 0
    a = open_store(out).ifm()
    rel, cos = a.quant_errors()
    assert np.isfinite(rel).all() and (rel < 0.02).all() and (cos > 0.99).all()
    assert verify(open_store(out), deep=True) == []
    assert not np.array_equal(a.read_video(0, 0), a.read_video(0, 1))
