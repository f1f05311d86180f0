"""Every flag a user can get wrong is one line and exit status 2, before any work: a device the
machine lacks, numbers that overflow or make no clip, flags that contradict each other or that
a run would silently ignore, outputs that are folders. Each case broke at 96c9d02 (the red-team
pass): a traceback, typer's usage box, a 16 GiB allocation, or a run that did something else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import FAST_EXTRACT, write_folder_tree, write_video
from typer.testing import CliRunner

from advise_cache import evaluate as evaluate_mod
from advise_cache.cli import app
from advise_cache.extract import extract_videos
from advise_cache.store import FAILED, open_store

runner = CliRunner()
SMALL = "--hidden 16 --out-dim 32 --device cpu --loader-threads 1 --batch-size 8".split()


def one_line(args: list, match: str = "") -> str:
    """Run the CLI; the user reads exactly one line (stderr, without progress bars), exit 2."""
    r = runner.invoke(app, [str(a) for a in args])
    lines = [t for t in re.split(r"[\r\n]", r.stderr) if t.strip() and not re.search(r"\d+%\|", t)]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def ok(args: list) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.fixture(scope="module")
def ft(synthetic_store, tmp_path_factory) -> Path:
    """A fine-tuned run (from scratch, one epoch) on the shared store."""
    run = tmp_path_factory.mktemp("flags") / "ft"
    ok(["finetune", "--cache", synthetic_store, "--out", run, "--scratch", "--epochs", "1", *SMALL])
    return run


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    return write_folder_tree(tmp_path_factory.mktemp("videos"), (6, 6))


@pytest.mark.parametrize("device", ["foo", "cuda", "cuda:7", "meta"])
@pytest.mark.parametrize("command", ["train", "evaluate", "extract", "embed"])
def test_a_device_this_machine_lacks_is_one_line(synthetic_store, ft, folder_root, tmp_path, command, device):
    if torch.cuda.device_count() > 7 and device.startswith("cuda"):
        pytest.skip("this machine has that device")
    args = {
        "train": ["train", "--cache", synthetic_store, "--out", tmp_path / "r", *SMALL[:-2]],
        "evaluate": ["evaluate", "--cache", synthetic_store, "--checkpoint", ft],
        "extract": ["extract", "folder", "--root", folder_root, "--out", tmp_path / "s.zarr", *FAST_EXTRACT[:4]],
        "embed": ["embed", "--cache", synthetic_store, "--checkpoint", ft, "--out", tmp_path / "e.npz"],
    }[command]
    one_line([*args, "--device", device], r"^error: --device ")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--seed", "99999999999999999999"], r"--seed must be >= 0 and < 2\^63"),
        (["--rates", "1,1000000000"], r"--stride 2 x rate 1000000000 puts a clip's frames .* apart"),
        (["--stride", "1000000"], r"--stride 1000000 x rate 8 puts"),
        (["--ifm", "test-vit,test-vit"], r"--ifm names an image model twice"),
        (["--clip-mode", "foo"], r"--clip-mode must be one of stride, segment"),
        (["--precision", "foo"], r"--precision must be one of"),
        (["--epochs", "many"], r"Invalid value for '--epochs'"),
        (["--lr", "fast"], r"Invalid value for '--lr'"),
    ],
)
def test_train_flags_that_make_no_run(synthetic_store, tmp_path, flags, match):
    one_line(["train", "--cache", synthetic_store, "--out", tmp_path / "r", *SMALL, *flags], match)
    assert not (tmp_path / "r").exists()


def test_a_finetune_stride_past_every_video_is_refused(synthetic_store, tmp_path):
    args = ["finetune", "--cache", synthetic_store, "--out", tmp_path / "r", "--scratch", *SMALL]
    one_line([*args, "--stride", "1000000"], r"^error: --stride 1000000 puts a clip's frames 1000000 stored")


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--seed", "99999999999999999999"], r"--seed must be >= 0 and < 2\^63"),
        (["--precision", "foo"], r"--precision must be one of auto, fp32, bf16, fp16, got 'foo'"),
        (["--batch-size", "x"], r"Invalid value for '--batch-size'"),
    ],
)
def test_extract_flags_that_make_no_run(folder_root, tmp_path, flags, match):
    one_line(["extract", "folder", "--root", folder_root, "--out", tmp_path / "s.zarr", *FAST_EXTRACT, *flags], match)
    assert not (tmp_path / "s.zarr").exists()


def test_model_flags_beside_init_are_refused_not_ignored(synthetic_store, ft, tmp_path):
    args = ["finetune", "--cache", synthetic_store, "--out", tmp_path / "r", "--init", ft, *SMALL[4:]]
    line = one_line([*args, "--tmm", "none", "--hidden", "32", "--blocks", "3"], r"^error: the TMM comes from --init")
    assert line.endswith("leave out --tmm none --blocks 3 --hidden 32")
    # The checkpoint's own values, and a new head, are no contradiction.
    ok([*args, "--hidden", "16", "--out-dim", "32", "--head", "linear", "--epochs", "1", "--batch-size", "8"])


def test_the_readable_copy_of_a_checkpoint_is_not_a_checkpoint(synthetic_store, ft, tmp_path):
    args = ["finetune", "--cache", synthetic_store, "--out", tmp_path / "r", *SMALL]
    one_line([*args, "--init", ft / "checkpoint.json"], r"checkpoint's readable metadata; pass the checkpoint\.pt")


@pytest.mark.slow
def test_evaluate_memory_does_not_grow_with_views(synthetic_store, ft, monkeypatch):
    # 96c9d02 stacked every view of a video into one batch: --views 1000000 asked for 16 GiB.
    seen = []
    real = evaluate_mod.collate
    monkeypatch.setattr(evaluate_mod, "collate", lambda clips: seen.append(len(clips)) or real(clips))
    out = ok(["evaluate", "--cache", synthetic_store, "--checkpoint", ft, "--views", "100", "--json"])
    assert '"views": 100' in out and max(seen) <= 32 and sum(seen) == 100 * 16  # 16 test videos


def test_a_figure_wider_than_its_video_is_refused(synthetic_store, ft, tmp_path):
    table = open_store(synthetic_store).videos
    video = str(table.name[0])
    args = ["visualize", "--cache", synthetic_store, "--checkpoint", ft, "--video", video, "--out", tmp_path / "a.png"]
    one_line([*args, "--frames", "1000", "--device", "cpu"], rf"^error: --frames 1000: {video} has \d+ stored frames")


def test_confusion_into_a_folder_names_the_file_written(synthetic_store, ft, tmp_path):
    out = ok(["evaluate", "--cache", synthetic_store, "--checkpoint", ft, "--views", "1", "--confusion", tmp_path])
    written = out.strip().splitlines()[-1].removeprefix("confusion matrix: ")
    assert written == str(tmp_path / "confusion-test.png") and Path(written).is_file()


def test_embed_into_a_folder_is_one_line(synthetic_store, ft, tmp_path):
    one_line(
        ["embed", "--cache", synthetic_store, "--checkpoint", ft, "--out", tmp_path], r"is a folder; give the file"
    )


def test_a_folder_named_like_a_video_is_recorded_as_failed(tmp_path):
    write_video(tmp_path / "data" / "a" / "good.mp4", 9, seed=1)
    (tmp_path / "data" / "b" / "x.mp4").mkdir(parents=True)
    from conftest import extract_config

    summary = extract_videos(extract_config(tmp_path / "data", tmp_path / "s.zarr", dataset="folder"))
    assert summary.done == 1 and [f["name"] for f in summary.failed] == ["b/x"]
    assert summary.failed[0]["reason"].endswith("a folder named like a video file, not a video")
    store = open_store(tmp_path / "s.zarr")
    assert list(store.ifm().status()) == [2 if n == "b/x" else 1 for n in store.videos.name] == sorted([FAILED, 1])
