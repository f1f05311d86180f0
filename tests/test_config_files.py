"""Settings from a file (`--config`): a run folder's config.json replays its run, YAML works,
flags given beside a file override it, and a key no config has is one line."""

from __future__ import annotations

import json
import re

import pytest
from conftest import FAST_EXTRACT, read_metrics, write_folder_tree
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.store import open_store

runner = CliRunner()
TINY = "--epochs 1 --batch-size 16 --hidden 16 --out-dim 32 --device cpu --loader-threads 1 --log-every 1".split()


def cli(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout


def one_line(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    lines = [t for t in re.split(r"[\r\n]", r.stderr) if t.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    return lines[0]


def losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]


def test_a_run_folders_config_replays_the_run(synthetic_store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cli("train", "--cache", synthetic_store, "--out", a, *TINY, "--seed", "3", "--rates", "1,2,4")
    cli("train", "--config", a / "config.json", "--out", b)
    assert losses(b) == losses(a) and len(losses(a)) == 6
    was, now = (json.loads((r / "config.json").read_text())["config"] for r in (a, b))
    assert {k: v for k, v in now.items() if k != "out"} == {k: v for k, v in was.items() if k != "out"}
    # Without --out the file's own folder is the target: it holds that run already.
    assert "already holds a run" in one_line("train", "--config", a / "config.json")


def test_a_yaml_file_with_flags_on_top(synthetic_store, tmp_path):
    (tmp_path / "prp.yaml").write_text(
        f"cache: {synthetic_store}\nepochs: 3\nseed: 3\ndevice: cpu\nloader_threads: 1\nlog_every: 1\n"
        "batch_size: 16\nsampler:\n  rates: [1, 2, 4]\ntmm:\n  hidden: 16\n  out_dim: 32\n"
    )
    resolved = json.loads(cli("train", "--config", tmp_path / "prp.yaml", "--epochs", "1", "--print-config"))
    assert (resolved["epochs"], resolved["seed"], resolved["sampler"]["rates"]) == (1, 3, [1, 2, 4])
    assert resolved["tmm"]["hidden"] == 16 and resolved["out"] == f"runs/{synthetic_store.stem}-prp"
    assert not (tmp_path / "runs").exists()  # --print-config trains nothing
    cli("train", "--config", tmp_path / "prp.yaml", "--epochs", "1", "--out", tmp_path / "y")
    cli("train", "--cache", synthetic_store, "--out", tmp_path / "f", *TINY, "--seed", "3", "--rates", "1,2,4")
    assert losses(tmp_path / "y") == losses(tmp_path / "f")  # the file and the flags: the same run


def test_the_printed_config_is_a_config(synthetic_store, tmp_path):
    printed = cli("finetune", "--cache", synthetic_store, "--scratch", "--preset", "released", "--print-config")
    (tmp_path / "ft.json").write_text(printed)
    again = cli("finetune", "--config", tmp_path / "ft.json", "--print-config")
    assert json.loads(again) == json.loads(printed) and json.loads(printed)["tmm"]["blocks"] == 4


@pytest.mark.parametrize(
    "text, match",
    [
        ("epoch: 3\n", r"unknown setting 'epoch' \(a TrainConfig has cache, out, task"),
        ("tmm:\n  hiden: 8\n", r"unknown setting 'tmm.hiden' \(a TMMConfig has"),
        ("sampler: 3\n", r"'sampler' must be a mapping of SamplerConfig settings"),
        ("epochs: [1\n", r"is not valid YAML"),
        ("- 1\n", r"expected a mapping of settings, got list"),
        ("task: classify\n", r"is a classify run: replay it with `advise-cache finetune`"),
    ],
)
def test_a_bad_file_is_one_line(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    line = one_line("train", "--config", tmp_path / "c.yaml", "--cache", tmp_path)
    assert line.startswith(f"error: --config {tmp_path / 'c.yaml'}") and re.search(match, line), line


def test_extract_from_a_file(tmp_path):
    root = write_folder_tree(tmp_path / "videos", (6, 7))
    flags = dict(zip(FAST_EXTRACT[::2], FAST_EXTRACT[1::2]))
    lines = [f"{k[2:]}: {v}" for k, v in flags.items()] + ["dataset: folder", f"root: {root}", "frames_per_shard: 4"]
    (tmp_path / "e.yaml").write_text("\n".join(lines) + f"\nout: {tmp_path / 'from-file.zarr'}\n")
    cli("extract", "--config", tmp_path / "e.yaml", "--out", tmp_path / "s.zarr")
    assert not (tmp_path / "from-file.zarr").exists()  # the flag won
    a = open_store(tmp_path / "s.zarr").ifm("test-vit")
    assert a.meta.frames_per_shard == 4 and list(a.frames) == [6, 7]
    assert "unknown setting 'frame_strde'" in one_line("extract", "--config", _write(tmp_path, "frame_strde: 2\n"))


def _write(tmp_path, text: str):
    (tmp_path / "bad.yaml").write_text(text)
    return tmp_path / "bad.yaml"
