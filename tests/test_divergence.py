"""The kept checkpoint is the last finite and non-diverged one: a learning rate so high that
the loss explodes while the weights stay finite stops the run and keeps the earlier checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import read_metrics, train_config

from advise_cache import train as train_mod
from advise_cache.checkpoint import load_checkpoint
from advise_cache.train import TrainingDiverged, divergence_limit, train


def test_divergence_limit_is_ten_times_chance_or_the_first_loss():
    assert divergence_limit(4, 1.2) == pytest.approx(10 * math.log(4))
    assert divergence_limit(4, 3.0) == pytest.approx(30.0)
    assert divergence_limit(4, None) == pytest.approx(10 * math.log(4))  # resumed from an older checkpoint
    assert divergence_limit(1, None) == pytest.approx(10 * math.log(2))  # one class: not a zero limit


@pytest.mark.slow
def test_diverged_loss_with_finite_weights_keeps_the_earlier_checkpoint(synthetic_store, tmp_path, monkeypatch):
    # 6 steps an epoch (24 videos x 4 clips, batch 16): one good epoch at the default --lr.
    good = {"epochs": 2, "max_steps": 6}
    bad = {"epochs": 2, "resume": True, "override": True, "lr": 100.0}  # AdamW steps of ~100: logits explode
    train(train_config(synthetic_store, tmp_path / "plain", **good))
    train(train_config(synthetic_store, tmp_path / "run", **good))
    before = load_checkpoint(tmp_path / "run")
    assert before.step == 6 and before.meta.first_loss == read_metrics(tmp_path / "run")[0]["loss"]

    # The recipe diverges while staying finite: with the check switched off it saves, and the
    # checkpoint it saves is finite, huge, and its epoch's loss is far above chance.
    monkeypatch.setattr(train_mod, "DIVERGED_FACTOR", math.inf)
    train(train_config(synthetic_store, tmp_path / "plain", **bad))
    monkeypatch.undo()
    diverged = load_checkpoint(tmp_path / "plain")
    weights = [v for v in diverged.model.values() if v.is_floating_point()]
    assert diverged.step == 12 and all(bool(v.isfinite().all()) for v in weights)
    assert max(float(v.abs().max()) for v in weights) > 1e6
    assert diverged.meta.metrics["loss"] > 1000 * math.log(4)

    # With the check: stopped with one clear message, the good checkpoint kept as it was.
    with pytest.raises(
        TrainingDiverged,
        match=r"^the loss diverged: epoch 1 averaged .* stopped at step 12 .* "
        r"The last good checkpoint is .*checkpoint\.pt$",
    ):
        train(train_config(synthetic_store, tmp_path / "run", **bad))
    after = load_checkpoint(tmp_path / "run")
    assert after.step == 6
    assert all(torch.equal(before.model[k], after.model[k]) for k in before.model)
    # Resuming again continues from that checkpoint (the diverged epoch's metric lines dropped).
    train(train_config(synthetic_store, tmp_path / "run", epochs=2, resume=True))
    assert load_checkpoint(tmp_path / "run").step == 12
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(1, 13))
