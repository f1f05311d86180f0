"""What a run shows of its progress besides metrics.jsonl: curves.png after every epoch (with
test top-1 once `evaluate` scores the run), TensorBoard event files with --tensorboard, and the
store-level notes people read before trusting a store or a plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import extract_config, read_metrics, train_config, write_video
from PIL import Image
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.curves import CURVES, PANEL, TEST, TRAIN, plot_curves
from advise_cache.extract import extract_videos
from advise_cache.train import train

runner = CliRunner()


def colour_pixels(png, colour) -> int:
    return int((np.asarray(Image.open(png).convert("RGB")) == colour).all(axis=-1).sum())


def test_a_run_folder_has_its_curves_after_one_epoch_and_test_dots_once_evaluated(synthetic_store, tmp_path):
    run = tmp_path / "ft"
    ft = dict(task="classify", epochs=2, batch_size=8)
    train(train_config(synthetic_store, run, **ft, max_steps=3))  # one epoch: 24 videos, batch 8
    png = run / CURVES
    assert Image.open(png).size == (2 * PANEL[0], PANEL[1])
    assert colour_pixels(png, TRAIN) > 0 and colour_pixels(png, TEST) == 0
    r = runner.invoke(app, ["evaluate", "--cache", str(synthetic_store), "--checkpoint", str(run), "--views", "1"])
    assert r.exit_code == 0, r.output
    (scored,) = read_metrics(run, "eval")
    assert scored["epochs"] == 1 and scored["step"] == read_metrics(run, "epoch")[-1]["step"]
    assert colour_pixels(png, TEST) > 0  # the test top-1 dot
    # A resume keeps the score of the checkpoint it continues from.
    train(train_config(synthetic_store, run, **ft, resume=True))
    assert len(read_metrics(run, "eval")) == 1 and len(read_metrics(run, "epoch")) == 2


def test_curves_skip_a_torn_line_and_draw_nothing_before_the_first_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_curves(tmp_path) is None and not (tmp_path / CURVES).exists()
    lines = [dict(kind="step", step=s, epoch=0, loss=1.4 - 0.1 * s, acc=0.3, lr=1e-3) for s in (1, 2)]
    lines.append(dict(kind="epoch", epoch=0, step=2, loss=1.3, acc=0.3))
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "epo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert plot_curves(tmp_path) == tmp_path / CURVES and colour_pixels(tmp_path / CURVES, TRAIN) > 0


def test_tensorboard_event_files_hold_the_metrics(synthetic_store, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(train_config(synthetic_store, run, epochs=1, tensorboard=True))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = events.Scalars("step/loss")
    assert [e.step for e in steps] == [r["step"] for r in read_metrics(run)]
    assert [e.value for e in steps] == pytest.approx([r["loss"] for r in read_metrics(run)])
    assert [e.step for e in events.Scalars("epoch/acc")] == [6]


def test_embed_plot_of_identical_embeddings_is_one_line(tmp_path):
    # Four copies of one video: every embedding is the same, which crashed t-SNE (exit 139).
    for i in range(4):
        write_video(tmp_path / "data" / "ab"[i % 2] / f"v{i}.mp4", 12, seed=7)
    store = tmp_path / "s.zarr"
    assert extract_videos(extract_config(tmp_path / "data", store, dataset="folder")).exit_code == 0
    small = "--hidden 8 --out-dim 16 --device cpu --loader-threads 1 --batch-size 4 --epochs 1".split()
    r = runner.invoke(app, ["train", "--cache", str(store), "--out", str(tmp_path / "prp"), *small, "--rates", "1,2"])
    assert r.exit_code == 0, r.output
    args = ["embed", "--cache", str(store), "--checkpoint", str(tmp_path / "prp"), "--split", "all"]
    r = runner.invoke(
        app, [*args, "--out", str(tmp_path / "e.npz"), "--plot", str(tmp_path / "t.png"), "--device", "cpu"]
    )
    error = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.exit_code == 2 and error == [
        "error: all 4 embeddings are identical (the same video over and over?): t-SNE has nothing to lay out"
    ], r.output
    assert (tmp_path / "e.npz").is_file() and not (tmp_path / "t.png").exists()


def test_verify_notes_failed_videos_beside_ok(tmp_path):
    write_video(tmp_path / "data" / "a" / "good.mp4", 9, seed=1)
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "gone.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    out = tmp_path / "s.zarr"
    assert extract_videos(extract_config(tmp_path / "data", out, dataset="folder")).exit_code == 3
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0, r.output
    note = "note: test-vit: 1 video(s) failed at extraction and are not in the store: b/gone: "
    assert r.stdout.startswith(note) and "which does not exist" in r.stdout.splitlines()[0]
    assert r.stdout.strip().splitlines()[-1] == "ok"
