"""README's Use section as typed: its stage-2 lines run top to bottom, each after the lines
before it, on tiny stores named as the README names them (test-vit tokens of the synthetic
videos, where the README's come from ViT-B-16 on UCF101), with its settings file."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import extract_config
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.extract import extract_videos

pytestmark = pytest.mark.slow  # `make test-fast` leaves this file out

README = Path(__file__).resolve().parents[1] / "README.md"
# Epochs and widths a test can afford; the device this machine has. Appended to each training
# line (a flag given twice: the last wins), so the README's own flags are all still run.
SMALL = "--hidden 16 --out-dim 32 --batch-size 8 --loader-threads 1 --device cpu".split()


def readme_block(first: str, fence: str = "```") -> str:
    """README's text from the line `first` to the end of its code block."""
    text = README.read_text()
    start = text.index(first)
    return text[start : text.index(fence, start + len(first))]


def stage2_lines() -> list[str]:
    lines = [line.split("#")[0].strip() for line in readme_block("# Stage 2").splitlines()[1:]]
    return [line for line in lines if line]


def test_the_stage_2_lines_run_top_to_bottom(synthetic_root, views_store, tmp_path, monkeypatch):
    for name, stride in (("ucf101.zarr", 1), ("ucf101-s2.zarr", 2)):
        s = extract_videos(extract_config(synthetic_root, tmp_path / name, frame_stride=stride))
        assert s.exit_code == 0
    shutil.copytree(views_store, tmp_path / "ucf101-aug.zarr")  # --aug-views 2 --crops 3 (appearance videos)
    yaml_text = readme_block("```yaml\n").removeprefix("```yaml\n")
    (tmp_path / "prp.yaml").write_text(yaml_text)
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in stage2_lines():
        args = shlex.split(line)
        if args[0] == "torchrun":  # a job of 4 processes: tests/test_train.py runs a 2-process one
            continue
        assert args[0] == "advise-cache", line
        args = [a if a != "800" else "1" for a in args[1:]]  # --epochs 800 -> 1
        if args[0] in ("train", "finetune"):
            args += SMALL + ["--epochs", "1"]
        elif args[0] == "evaluate":
            args += ["--device", "cpu"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, f"{line}\n{r.output}"
        ran.append(args[0])
    assert ran.count("train") >= 8 and ran.count("finetune") == 4 and ran.count("evaluate") == 2
    assert (tmp_path / "runs" / "released-seed1" / "checkpoint.pt").is_file()
    again = json.loads((tmp_path / "runs" / "released-seed1" / "config.json").read_text())["config"]
    assert (again["preset"], again["seed"], again["tmm"]["blocks"]) == ("released", 1, 4)


def test_the_settings_file_example_is_what_it_says(tmp_path):
    (tmp_path / "prp.yaml").write_text(readme_block("```yaml\n").removeprefix("```yaml\n"))
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "prp.yaml"), "--print-config"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert (cfg["preset"], cfg["epochs"], cfg["seed"], cfg["tmm"]["blocks"]) == ("released", 800, 1, 2)
    assert cfg["tmm"]["temporal_kernel"] == 1 and cfg["lr_rule"] == "code"  # the rest from the preset
    assert re.fullmatch(r"runs/ucf101-prp", cfg["out"])
