"""The size plan (issue 12): `extract --dry-run` prints what a store will take and writes
nothing; its bytes are the bytes extraction writes; a run the disk cannot hold is refused
before anything is written, naming the options that would fit. A disk that fills during a run
anyway is tests/test_storage_errors.py's."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_EXTRACT, extract_config, write_folder_tree
from typer.testing import CliRunner

from advise_cache import plan as plan_mod
from advise_cache.cli import app
from advise_cache.extract import extract_videos, plan_extraction
from advise_cache.integrity import verify
from advise_cache.shards import CRC_BYTES, index_bytes
from advise_cache.store import open_store

runner = CliRunner()
FRAMES = (7, 10, 12, 9, 1)  # shards of 4: full, cut, and a one-frame video
PER = 4
# The whole store folder beyond the plan's bytes: zarr.json files, the video table and three
# one-chunk files per video (status, reason, checksum): 28,366 bytes for these five videos at
# either stride when this test was written.
METADATA_TOLERANCE = 40_000


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_folder_tree(tmp_path_factory.mktemp("videos"), FRAMES)


def config(root: Path, out: Path, **kw):
    return extract_config(root, out, dataset="folder", frames_per_shard=PER, **kw)


def args(root: Path, out: Path, *more: str) -> list[str]:
    where = ["extract", "folder", "--root", str(root), "--out", str(out)]
    return [*where, *FAST_EXTRACT, "--frames-per-shard", str(PER), *more]


def messages(output: str) -> list[str]:
    bar = re.compile(r"(probe|extract [\w.-]+):\s+\d+%\|")
    return [t for t in re.split(r"[\r\n]", output) if t.strip() and not bar.match(t)]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("stride, dtype", [(1, "float16"), (2, "float16"), (2, "int8")])
def test_the_plan_is_the_bytes_extraction_writes(root, tmp_path, stride, dtype):
    out = tmp_path / "s.zarr"
    plan = plan_extraction(config(root, out, frame_stride=stride, dtype=dtype))
    assert not out.exists()  # the dry run wrote nothing
    rows = [-(-n // stride) for n in FRAMES]
    # test-vit: a 4x4 grid of 64 channels, float16 or int8 with a float16 scale per token
    frame = 4 * 4 * (64 * 2 if dtype == "float16" else 64 + 2)
    assert plan.chosen.frame_bytes == frame and plan.chosen.frames == sum(rows)
    # each frame followed by its crc32c, each shard ended by its index
    assert plan.chosen.bytes == sum(r * (frame + CRC_BYTES) + -(-r // PER) * index_bytes(PER) for r in rows)

    assert extract_videos(config(root, out, frame_stride=stride, dtype=dtype)).done == len(FRAMES)
    # The shard files are exactly the plan; the whole folder adds only metadata.
    assert folder_bytes(out / "ifm" / "test-vit" / "tokens" / "c") == plan.chosen.bytes
    assert 0 < folder_bytes(out) - plan.chosen.bytes < METADATA_TOLERANCE
    # Once extracted, nothing is left to write.
    again = plan_extraction(config(root, out, frame_stride=stride, dtype=dtype))
    assert again.chosen.bytes == plan.chosen.bytes and again.chosen.to_write == 0


def test_dry_run_prints_the_plan_and_writes_nothing(root, tmp_path):
    out = tmp_path / "new" / "s.zarr"
    r = runner.invoke(app, args(root, out, "--dry-run"))
    assert r.exit_code == 0, r.output
    text = "\n".join(messages(r.output))
    assert f"plan for {out}: test-vit tokens 4x4x64 float16, frame stride 1" in text
    assert f"frames: {sum(FRAMES)} in the videos, {sum(FRAMES)} stored" in text
    assert "bytes per frame: 2048 (4x4 tokens x 128 bytes)" in text
    assert "free where the store goes: " in text and ": fits" in text
    # The model's rate is measured on random crops: a time for the frames still to extract.
    assert re.search(r"time: at least \d+ s: the image model alone runs [\d.]+ frames/s on cpu", text), text
    assert re.search(r"stride 2 +float16: .*fits", text), text
    assert not (tmp_path / "new").exists()


def test_a_store_the_disk_cannot_hold_is_refused_before_writing(root, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    plan = plan_extraction(config(root, out))
    half = next(o for o in plan.options if o.frame_stride == 2 and o.dtype == "float16")
    # Room for the stride-2 store, not for the stride-1 one.
    monkeypatch.setattr(plan_mod, "free_bytes", lambda path: half.needed)
    r = runner.invoke(app, args(root, out))
    assert r.exit_code == 2, r.output
    told = messages(r.output)
    assert len(told) == 1 and told[0].startswith(f"error: {out} needs "), r.output
    assert "nothing was written. these would fit: --frame-stride 2 (" in told[0], told[0]
    assert "or an --out on a disk with" in told[0]
    assert not out.exists()
    # The option it names does fit, and makes a whole store.
    r = runner.invoke(app, args(root, out, "--frame-stride", "2"))
    assert r.exit_code == 0, r.output
    assert verify(open_store(out)) == []


def test_when_no_option_fits_it_asks_for_another_out(root, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    monkeypatch.setattr(plan_mod, "free_bytes", lambda path: 1000)
    r = runner.invoke(app, args(root, out))
    assert r.exit_code == 2, r.output
    told = messages(r.output)
    assert len(told) == 1 and "nothing was written. use an --out on a disk with " in told[0], r.output
    assert "(--dtype int8, --frame-stride 2, --frame-stride 2 --dtype int8 would not fit either)" in told[0]
    assert not out.exists()


def test_a_resumed_run_needs_room_only_for_what_is_left(root, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    assert extract_videos(config(root, out)).done == len(FRAMES)
    monkeypatch.setattr(plan_mod, "free_bytes", lambda path: plan_mod.SLACK_FIXED)
    assert extract_videos(config(root, out)).already_done == len(FRAMES)


@pytest.mark.slow
def test_the_dry_run_needs_no_weights(root, tmp_path):
    # ViT-B-16's weights are not on this machine: the plan runs on random ones of its architecture.
    plan = plan_extraction(config(root, tmp_path / "s.zarr", model="ViT-B-16", pretrained="openai", batch_size=1))
    assert (plan.grid, plan.dim) == ((14, 14), 768) and plan.model_fps > 0
    assert plan.chosen.frame_bytes == 14 * 14 * 768 * 2
    assert not (tmp_path / "s.zarr").exists()
    # ... and says that the real run would stop for want of them (96c9d02 was silent).
    weights = [line for line in plan.lines() if line.startswith("weights:")]
    assert len(weights) == 1 and "NOT available here" in weights[0] and "--pretrained" in weights[0]
    test_vit = plan_extraction(config(root, tmp_path / "t.zarr", batch_size=1))
    assert test_vit.weights == "" and not any(line.startswith("weights:") for line in test_vit.lines())


def test_the_plan_offers_int8_beside_float16():
    """int8 with a float16 scale per token: D + 2 bytes."""
    plan = plan_mod.size_plan(
        Path("x.zarr"), "ViT-B-16", (14, 14), 768, np.array([250, 100]), np.zeros(2, bool), 1, "float16", 64
    )
    by = {(o.frame_stride, o.dtype): o for o in plan.options}
    assert set(by) == {(1, "float16"), (1, "int8"), (2, "float16"), (2, "int8")}
    assert by[1, "float16"].frame_bytes == 301_056 and by[1, "int8"].frame_bytes == 196 * 770
    assert by[2, "int8"].flags() == "--frame-stride 2 --dtype int8"
