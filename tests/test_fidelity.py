"""The `released` preset against docs/FIDELITY.md, and the recipe choices it sets: the learning-rate
rule, the clip start, SyncBatchNorm's refusal on CPUs, a CLI run's config.json.

Run: .venv/bin/python -m pytest tests/test_fidelity.py
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.configs import (
    PRESETS,
    TMMConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    preset_config,
    scaled_lr,
)
from advise_cache.errors import AdviseCacheError
from advise_cache.runtime import Dist

TABLE = Path(__file__).resolve().parents[1] / "docs" / "FIDELITY.md"
VERDICTS = ("same", "deviation", "kept", "flag", "not expressible", "not yet expressible", "not released")


def table_rows() -> list[dict]:
    """FIDELITY.md's table: per row the choice, the field, the first `value` of each of the three
    value columns, and the verdict's leading words."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("choice", "---"):
            continue
        values = [re.search(r"`([^`]*)`", c) for c in cells[2:5]]
        assert all(values), f"FIDELITY.md: a value column without a `value`: {line}"
        verdict = next((v for v in sorted(VERDICTS, key=len, reverse=True) if cells[5].startswith(v)), None)
        assert verdict, f"FIDELITY.md: unknown verdict in {line}"
        field = cells[1].strip("`") if cells[1] != "—" else None
        rows.append(dict(choice=cells[0], field=field, values=[v.group(1) for v in values], verdict=verdict))
    return rows


def shown(value) -> str:
    """A config value as the table writes it."""
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def field_value(cfg: TrainConfig, field: str):
    obj = cfg
    for part in field.split("."):
        obj = getattr(obj, part)
    return obj


def test_fidelity_table_matches_the_presets():
    rows = table_rows()
    assert len(rows) >= 40
    presets = {"released": preset_config("released", cache=Path(), out=Path()), "ours": TrainConfig(Path(), Path())}
    for row in rows:
        code, released, default = row["values"]
        if row["field"] is not None:
            assert shown(field_value(presets["released"], row["field"])) == released, row["choice"]
            assert shown(field_value(presets["ours"], row["field"])) == default, row["choice"]
        if row["verdict"] == "same":
            assert code == released == default, row["choice"]
        elif row["verdict"] == "deviation":
            assert code == released != default, row["choice"]
    # Every field the released preset sets has a row; so does every TMM field that shapes the model.
    named = {r["field"] for r in rows}
    wanted = {*PRESETS["released"].train, *(f"sampler.{k}" for k in PRESETS["released"].sampler)}
    wanted |= {f"tmm.{k}" for k in ("blocks", "hidden", "out_dim", "temporal_kernel", "head", "head_hidden")}
    assert wanted <= named, wanted - named


def test_released_preset_and_its_round_trip():
    cfg = preset_config("released", cache=Path("s.zarr"), out=Path("r"))
    assert cfg.tmm == TMMConfig.released() and cfg.preset == "released"
    assert (cfg.lr_rule, cfg.sync_bn, cfg.precision, cfg.clip_mode) == ("code", True, "fp32", "jitter")
    assert (cfg.sampler.clip_start, cfg.sampler.clip_order) == ("code", "by-video")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    # Given fields win over the preset; None means the preset's.
    mixed = preset_config(
        "released",
        tmm={"temporal_kernel": 3, "blocks": None},
        cache=Path(),
        out=Path(),
        lr_rule="per-clip",
        precision=None,
    )
    assert (mixed.tmm.temporal_kernel, mixed.tmm.blocks, mixed.lr_rule, mixed.precision) == (3, 4, "per-clip", "fp32")
    with pytest.raises(AdviseCacheError, match="--preset must be one of ours, paper, released"):
        preset_config("mine")


def test_learning_rate_rules():
    # The code's rule counts videos of 4 clips at 64 videos: its 8 videos x 4 GPUs run at 5e-4.
    code = preset_config("released", cache=Path(), out=Path(), batch_size=32)
    assert scaled_lr(code, world=4) == pytest.approx(5e-4)
    assert scaled_lr(replace(code, lr_rule="per-clip"), world=4) == pytest.approx(4e-3)  # 8x at equal clips
    # Fine-tuning: a "jitter" fine-tune has clips_per_video clips a video, a stride one one clip.
    ft = replace(code, task="classify")
    assert scaled_lr(ft, world=1) == pytest.approx(1e-3 * 8 / 64)
    assert scaled_lr(replace(ft, clip_mode="stride"), world=1) == pytest.approx(1e-3 * 32 / 64)


def test_train_with_the_released_preset_records_every_choice(synthetic_store, tmp_path):
    """`advise-cache train --preset released` on the CPU: config.json holds the released code's
    model and recipe, with the one flag given on top (a narrower bottleneck, for speed), and the
    first step's learning rate is the code's rule's."""
    out = tmp_path / "prp"
    flags = f"--hidden 16 --max-steps 1 --batch-size 4 --warmup-epochs 0 --device cpu --loader-threads 1 --out {out}"
    result = CliRunner().invoke(app, ["train", "--cache", str(synthetic_store), "--preset", "released", *flags.split()])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())["config"]
    tmm, sampler = cfg["tmm"], cfg["sampler"]
    assert (tmm["temporal_kernel"], tmm["blocks"], tmm["hidden"], tmm["out_dim"]) == (1, 4, 16, 512)
    assert (tmm["head"], tmm["head_hidden"], tmm["weight_init"]) == ("bn-mlp", 1024, "torch")
    assert (cfg["lr_rule"], cfg["sync_bn"], cfg["precision"], cfg["preset"]) == ("code", True, "fp32", "released")
    assert (sampler["clip_start"], sampler["clip_order"], cfg["clip_mode"]) == ("code", "by-video", "jitter")
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(1e-3 * 4 / 4 / 64)  # 4 clips: 1 video of the code's 64


def test_sync_bn_under_torchrun_needs_cuda(synthetic_store, tmp_path):
    from advise_cache.train import _setup

    cfg = preset_config("released", cache=synthetic_store, out=tmp_path / "r", device="cpu", batch_size=4)
    with pytest.raises(AdviseCacheError, match="--sync-bn needs CUDA"):
        _setup(cfg, Dist(rank=0, world=2, local_rank=0))
    _setup(replace(cfg, sync_bn=False), Dist(rank=0, world=2, local_rank=0))  # the flag is what it refuses
